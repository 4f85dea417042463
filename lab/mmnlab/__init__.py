"""mmntrace's lab: real kernels under QEMU (vm, guest), the test module's
client (testmod), the workloads the lab tests drive (workload), and the
harness that runs them beside a recorder and ground truth (harness).

Development only: it is not part of the mmntrace package a user installs.
"""
