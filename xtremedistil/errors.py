"""The project's error type for problems the user can fix (bad input, bad flags, bad files)."""
import errno


class XtremeDistilError(ValueError):
    """A user-facing error: the CLI prints its message (no traceback) and exits with `exit_code`.

    `problems` holds one line per problem (`path:line: what is wrong`) when there are several.
    """

    exit_code = 2

    def __init__(self, message, problems=None):
        self.problems = list(problems or [])
        super().__init__(message)


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC / EFBIG / EDQUOT from the OS, or the same condition reported by h5py or TensorFlow."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return True
        if any(text in str(err) for text in ("No space left on device", "File too large", "Disk quota exceeded")):
            return True
        err = err.__cause__ or err.__context__
    return False
