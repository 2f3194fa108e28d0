"""xtremedistil: distil pre-trained language models into tiny students and deploy them.

Importing this package first guarantees that TensorFlow, when it is imported later, uses
Keras 2 (`tf_keras`): Hugging Face TF models and tensorflow-model-optimization need it.
"""
import os
import sys

# Must happen before anything imports TensorFlow; set once, never overriding the user.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from xtremedistil.errors import XtremeDistilError  # noqa: E402

__version__ = "0.1.0"


def module_command(module: str, *args: str) -> list[str]:
    """`python -m MODULE ARGS` with this interpreter, for a child process. With -P (3.11+) the working directory
    does not go first on sys.path: a run from a source checkout with the package installed non-editable (the
    checkout's xtremedistil/ folder holds no distill/, export/, bench/) imports the installed package."""
    return [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-m", module, *args]

# What TensorFlow's C++ start-up writes to fd 2 before TF_CPP_MIN_LOG_LEVEL takes effect (absl, XLA's CUDA probe,
# oneDNN/CPU notices): noise that would surround a one-line error.
_STARTUP_NOISE = ("All log messages before absl::InitializeLog()", "cudart_stub.cc", "Could not find cuda drivers",
                  "oneDNN custom operations", "This TensorFlow binary is optimized", "To enable the following",
                  "computation_placer", "cuda_", "cuInit", "TF-TRT Warning")


def import_tensorflow_quietly():
    """Imports TensorFlow with its C++ start-up lines held back (anything else it prints is passed on)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):          # no real fd 2 (embedded interpreters): import as is
        import tensorflow
        return tensorflow
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow
            tensorflow.config.list_physical_devices()   # the CUDA probe ("failed call to cuInit") happens here
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode("utf-8", "replace").splitlines()
                    if line.strip() and not any(noise in line for noise in _STARTUP_NOISE)]
            if kept:
                print("\n".join(kept), file=sys.stderr)
    return tensorflow
__all__ = ["XtremeDistilError", "__version__", "import_tensorflow_quietly"]
