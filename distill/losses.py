"""Losses of the stages, looked up by name.

Every sub-stage declares its loss by name (`SubStage.loss`): stage 1 is always `mse` on the hidden
target, stage 2 is `--distil_loss` on the teacher's logits, stage 3 is `cross_entropy` on labels.

A loss maps (target, output) to one value per *item* (a sentence for classification, a position
for tagging), reduced over the last axis. The stages weight items (tagging: 1 on the first piece
of each word, 0 on continuation pieces, special tokens and padding, where the teacher's outputs
were never trained) and divide the weighted sum by the weight total of the *global* batch, so a
multi-replica step equals the one-device mean.

Adding a loss is one function here with `@register_loss("name")`.
"""
from __future__ import annotations

from typing import Callable

import tensorflow as tf

from xtremedistil.errors import XtremeDistilError

LOSSES: dict[str, Callable] = {}
LABEL_LOSSES = ("cross_entropy",)     # take integer labels, not teacher outputs


def register_loss(name: str):
    """Registers `fn(target, output, temperature) -> per-item loss` (last axis reduced)."""
    def wrap(fn):
        LOSSES[name] = fn
        return fn
    return wrap


def get_loss(name: str) -> Callable:
    if name not in LOSSES:
        raise XtremeDistilError(f"unknown loss '{name}'; valid losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def distil_losses() -> list[str]:
    """Losses that compare with teacher outputs (choices of --distil_loss)."""
    return sorted(name for name in LOSSES if name not in LABEL_LOSSES)


@register_loss("mse")
def mse(target, output, temperature: float = 1.0):
    """Mean squared error over the last axis (the original's stage-1 and default stage-2 loss)."""
    return tf.reduce_mean(tf.square(output - target), axis=-1)


@register_loss("kl")
def kl(target, output, temperature: float = 1.0):
    """KL(teacher || student) of softmaxes at `temperature`, scaled by T^2 (Hinton et al.)."""
    t = temperature
    teacher = tf.nn.softmax(target / t, axis=-1)
    log_ratio = tf.nn.log_softmax(target / t, axis=-1) - tf.nn.log_softmax(output / t, axis=-1)
    return tf.reduce_sum(teacher * log_ratio, axis=-1) * t * t


@register_loss("cross_entropy")
def cross_entropy(labels, logits, temperature: float = 1.0):
    """Cross-entropy against integer labels; ignored labels (< 0) must carry weight 0."""
    labels = tf.cast(labels, tf.int32)
    return tf.keras.losses.sparse_categorical_crossentropy(tf.maximum(labels, 0), logits, from_logits=True)


def weighted_sum(name: str, target, output, weight, temperature: float = 1.0):
    """Sum over items of weight x loss (the numerator of a replica's share of the mean)."""
    per_item = get_loss(name)(target, output, temperature)
    return tf.reduce_sum(per_item * tf.cast(weight, per_item.dtype))
