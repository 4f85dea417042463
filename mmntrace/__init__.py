"""mmntrace: trace Linux MMU notifiers."""
