"""Run the notebooks shipped with mmntrace (this package's *.ipynb) against a recording.

    mmntrace notebooks RECORDING OUTDIR     (or: python -m mmntrace.notebooks RECORDING OUTDIR)

Each notebook reads the recording named by ``MMNTRACE_RECORDING``; the
executed copies (with outputs) are written to OUTDIR. Used by the unit test
(synthetic recording) and the lab test (a real one). Needs the ``notebooks``
extra (nbclient, nbformat, ipykernel).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..errors import MmntraceError
from ..outpath import OutputDir, write_atomic

#: the notebooks are package data: beside this file in a checkout and in an install
NOTEBOOKS = Path(__file__).resolve().parent
FLEET = NOTEBOOKS / "fleet"


class NotebookError(MmntraceError):
    exit_code = 40


def notebook_paths(notebooks_dir: str | Path | None = None) -> list[Path]:
    d = Path(notebooks_dir) if notebooks_dir else NOTEBOOKS
    paths = sorted(d.glob("*.ipynb"))
    if not paths:
        raise NotebookError(f"no notebooks in {d}")
    return paths


def run_notebooks(recording_dir: str | Path, out_dir: str | Path, *, notebooks_dir: str | Path | None = None,
                  timeout: int = 600) -> list[Path]:
    """Execute every notebook with MMNTRACE_RECORDING=recording_dir; write the
    executed copies to out_dir and return their paths. Raises NotebookError
    (one sentence: notebook, cell, exception) when a cell fails."""
    try:
        import nbclient  # noqa: F401
        import nbformat  # noqa: F401
    except ImportError as e:
        raise NotebookError(f"running notebooks needs the notebooks extra ({e.name} is missing): "
                            "pip install 'mmntrace[notebooks]'") from None
    rec = Path(recording_dir).resolve()
    out = Path(out_dir)
    OutputDir(out, mode=0o700).close()      # made private, never a link (outpath)
    # Writable scratch for Jupyter's connection files, IPython's profile and
    # matplotlib's cache: HOME may be read-only (a lab guest sees the host's root
    # file system read-only).
    # absolute: the kernel runs in the notebooks' directory, where a relative
    # path would name (and leave behind) another directory
    scratch = Path(tempfile.mkdtemp(prefix=".scratch-", dir=out.resolve()))
    dirs = {"JUPYTER_RUNTIME_DIR": scratch / "runtime", "IPYTHONDIR": scratch / "ipython",
            "MPLCONFIGDIR": scratch / "mpl"}
    env = dict(os.environ, MMNTRACE_RECORDING=str(rec), MPLBACKEND="module://matplotlib_inline.backend_inline",
               **{k: str(v) for k, v in dirs.items()})
    # the kernel must import this mmntrace (checkout or install), whatever its working directory
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    saved = {k: os.environ.get(k) for k in dirs}
    os.environ.update({k: str(v) for k, v in dirs.items()})   # this side writes the connection file
    try:
        return _run_all(notebook_paths(notebooks_dir), rec, out, env, timeout)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(scratch, ignore_errors=True)


def _run_all(paths, rec, out, env, timeout) -> list[Path]:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    written = []
    for nb_path in paths:
        nb = nbformat.read(nb_path, as_version=4)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(nb_path.parent)}})
        try:
            client.execute(env=env)
        except CellExecutionError as e:
            line = next((ln for ln in str(e).splitlines() if ln.strip() and not ln.startswith("-")), str(e))
            ename = getattr(e, "ename", "") or "error"
            evalue = getattr(e, "evalue", "") or line
            raise NotebookError(f"{nb_path.name} failed on {rec}: {ename}: {evalue}") from None
        except (CellTimeoutError, DeadKernelError, RuntimeError) as e:
            raise NotebookError(f"{nb_path.name} did not finish on {rec}: {str(e).splitlines()[0] if str(e) else e}") \
                from None
        finally:
            # 0600: the executed cells print the recording's mm addresses and stacks
            text = nbformat.writes(nb)
            dest = write_atomic(out / nb_path.name, (text if text.endswith("\n") else text + "\n").encode("utf-8"))
        written.append(dest)
    return written


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        for p in run_notebooks(argv[0], argv[1]):
            print(p)
    except MmntraceError as e:
        print(f"mmntrace: {e}", file=sys.stderr)
        return e.exit_code
    return 0

