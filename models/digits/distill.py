"""Distil the digits classifier into a smaller student and export it to ONNX (version "3").

Run after ``build.py`` (which trains the teacher and saves it to models/build/digits/):

    .venv-models/bin/python models/digits/distill.py

Recipe (Hinton et al., "Distilling the Knowledge in a Neural Network"): the student learns from
the teacher's softened outputs, softmax(logits / T), and from the hard labels at once:

    loss = ALPHA * T^2 * KL(teacher_T || student_T) + (1 - ALPHA) * CE(y, student)

T^2 keeps the soft term's gradients on the same scale as the hard one's. The student is an MLP
with one narrow hidden layer (about a tenth of the teacher's weights); a twin with the same
seed trained on labels alone is printed beside it so the effect of distillation is visible.
The student's numbers go through the same report as the quantized variants:

    fleet model optimize models/digits/digits-fp32.onnx --calibration ... --eval ... \\
        --out DIR --compare models/digits/digits-student-fp32.onnx
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import build  # the digits build script beside this one: splits, export, cards

STUDENT_HIDDEN = 16
TEMPERATURE = 4.0
ALPHA = 0.7
EPOCHS = 80
BATCH = 32
STUDENT_FILE = build.HERE / "digits-student-fp32.onnx"
TEACHER_FILE = build.REPO / "models" / "build" / "digits" / "digits.keras"


def teacher_logits(weights: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """The teacher's pre-softmax outputs, computed from its Dense weights."""
    hidden = x
    for kernel, bias in weights[:-1]:
        hidden = np.maximum(hidden @ kernel + bias, 0.0)
    kernel, bias = weights[-1]
    return (hidden @ kernel + bias).astype(np.float32)


def train_student(x: np.ndarray, y: np.ndarray, soft_logits: np.ndarray | None):
    """A 64-STUDENT_HIDDEN-10 MLP (logits out); distilled when ``soft_logits`` is given."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(build.SEED)
    student = keras.Sequential(
        [
            keras.Input(shape=(64,), name=build.INPUT_NAME),
            keras.layers.Dense(STUDENT_HIDDEN, activation="relu"),
            keras.layers.Dense(10),  # logits; the ONNX export adds the softmax
        ]
    )
    optimizer = keras.optimizers.Adam(3e-3)
    hard_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(build.SEED)

    @tf.function
    def step(xb, yb, tb):
        with tf.GradientTape() as tape:
            logits = student(xb, training=True)
            loss = hard_loss(yb, logits)
            if soft_logits is not None:
                soft_teacher = tf.nn.softmax(tb / TEMPERATURE)
                log_student = tf.nn.log_softmax(logits / TEMPERATURE)
                kl = tf.reduce_mean(
                    tf.reduce_sum(
                        soft_teacher * (tf.math.log(soft_teacher + 1e-12) - log_student), axis=1
                    )
                )
                loss = ALPHA * TEMPERATURE**2 * kl + (1 - ALPHA) * loss
        gradients = tape.gradient(loss, student.trainable_variables)
        optimizer.apply_gradients(zip(gradients, student.trainable_variables, strict=True))

    targets = soft_logits if soft_logits is not None else np.zeros((len(x), 10), np.float32)
    for _ in range(EPOCHS):
        order = rng.permutation(len(x))
        for start in range(0, len(x), BATCH):
            index = order[start : start + BATCH]
            step(x[index], y[index], targets[index])
    return student


def main() -> None:
    import keras

    if not TEACHER_FILE.is_file():
        raise SystemExit(f"no teacher at {TEACHER_FILE}: run models/digits/build.py first")
    splits = build.make_splits()
    teacher = keras.models.load_model(TEACHER_FILE, compile=False)
    soft = teacher_logits(build.dense_weights(teacher), splits.x_train)

    distilled = train_student(splits.x_train, splits.y_train, soft)
    labels_only = train_student(splits.x_train, splits.y_train, None)

    build.export_onnx_fp32(build.dense_weights(distilled), STUDENT_FILE)
    probs = build.run_onnx(STUDENT_FILE, splits.x_eval)
    card = build.write_card(
        STUDENT_FILE,
        runtime="onnx",
        version="3",
        specs=build.onnx_tensor_specs(STUDENT_FILE),
        outputs_eval=probs,
        splits=splits,
        atol=build.FP32_ATOL,
        description=(
            f"MLP 64-{STUDENT_HIDDEN}-10 distilled from the 64-"
            f"{'-'.join(map(str, build.HIDDEN))}-10 teacher on scikit-learn's 8x8 digits "
            f"(T={TEMPERATURE:g}, alpha={ALPHA:g}); fp32 ONNX"
        ),
    )
    teacher_accuracy = float(
        np.mean(teacher.predict(splits.x_eval, verbose=0).argmax(1) == splits.y_eval)
    )
    plain_logits = labels_only.predict(splits.x_eval, verbose=0)
    plain_accuracy = float(np.mean(plain_logits.argmax(1) == splits.y_eval))
    teacher_params, student_params = teacher.count_params(), distilled.count_params()
    print(f"teacher  {teacher_params:6d} weights  eval accuracy {teacher_accuracy:.4f}")
    print(
        f"student  {student_params:6d} weights  eval accuracy "
        f"{build.card_accuracy(card):.4f} (distilled, {STUDENT_FILE.name}, "
        f"{STUDENT_FILE.stat().st_size} bytes)"
    )
    print(
        f"student  {student_params:6d} weights  eval accuracy {plain_accuracy:.4f} "
        "(same seed, labels only: for comparison, not exported)"
    )


if __name__ == "__main__":
    main()
