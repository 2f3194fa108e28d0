import os
import subprocess
import sys


def test_keras_in_use_is_keras2_tf_keras():
    import xtremedistil  # noqa: F401
    import tensorflow as tf

    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    assert tf.keras.__name__.startswith("tf_keras"), tf.keras.__name__
    import tf_keras

    assert tf_keras.__version__.startswith("2."), tf_keras.__version__
    assert isinstance(tf.keras.layers.Dense(1), tf_keras.layers.Layer)


def test_stage_packages_import_under_one_namespace():
    import xtremedistil.bench
    import xtremedistil.distill.data
    import xtremedistil.export

    assert xtremedistil.distill.data.load_task
    assert xtremedistil.export.__name__ == "xtremedistil.export"
    assert xtremedistil.bench.__name__ == "xtremedistil.bench"


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "xtremedistil", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "teacher" in out.stdout
