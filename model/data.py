"""Batches of phantoms encoded for every task, shared by training, evaluation and tests.

Random streams: training draws from ``np.random.default_rng((TRAIN_STREAM, seed, part))`` and
held-out sets from ``(EVAL_STREAM, seed, part)``, so no seed can make the two coincide.
"""

import numpy as np

import phantoms
from network import (ANSWER_LEN, CONDITION_LEN, GENERATE_TASKS, GRID, QUESTION_LEN,
                     REPORT_LEN)
from pacsflow_contract import Tokenizer

TRAIN_STREAM, EVAL_STREAM, REFERENCE_STREAM = 1, 2, 3
TOKENIZER = Tokenizer.from_words(phantoms.vocabulary_words())
QUESTIONS = phantoms.questions()
# A synthesized finding's box weighs this much more in the image loss: it is the few pixels
# that matter most, and plain L1 would happily leave the finding out.
SYNTH_FINDING_WEIGHT = 25.0


def rng(stream, seed, part=0):
    """A numpy generator for one stream, seed and (within one use) independent part."""
    return np.random.default_rng((stream, seed, part))


def encode(texts, length):
    return np.array([TOKENIZER.encode(t, length) for t in texts], dtype=np.int32)


def training_prompt(flags, r):
    """A synthesis prompt in the varied forms a user might type (order, empty, stray words)."""
    names = [label for label, on in zip(phantoms.LABELS, flags) if on]
    r.shuffle(names)
    if not names:
        return "normal" if r.random() < 0.7 else ""
    words = " , ".join(names).split()
    if r.random() < 0.2:
        words.insert(int(r.integers(0, len(words) + 1)), "with")  # not in the vocabulary: unk
    return " ".join(words)


def patch_targets(boxes, present):
    """[n,K,patches]: 1 where a present finding's box covers a real part of the patch.

    "Real part": at least a quarter of the smaller of the box and the patch, so a box that
    grazes a patch's edge does not mark it.
    """
    edges = np.arange(GRID + 1) / GRID
    y0, y1 = np.repeat(edges[:-1], GRID), np.repeat(edges[1:], GRID)
    x0, x1 = np.tile(edges[:-1], GRID), np.tile(edges[1:], GRID)
    b = boxes[..., None]
    inter = (np.clip(np.minimum(b[..., 2, :], y1) - np.maximum(b[..., 0, :], y0), 0, None) *
             np.clip(np.minimum(b[..., 3, :], x1) - np.maximum(b[..., 1, :], x0), 0, None))
    box_area = (b[..., 2, :] - b[..., 0, :]) * (b[..., 3, :] - b[..., 1, :])
    smaller = np.minimum(box_area, 1.0 / GRID ** 2)
    covered = inter >= 0.25 * np.maximum(smaller, 1e-9)
    return (covered & present[..., None]).astype(np.float32)


def finding_mask(findings):
    """64x64: 1 inside any finding's box."""
    mask = np.zeros((phantoms.SIZE, phantoms.SIZE))
    for f in findings.values():
        y0, x0, y1, x1 = (int(round(v * phantoms.SIZE)) for v in f["box"])
        mask[y0:y1, x0:x1] = 1.0
    return mask


def make_batch(r, n, training=True, balanced=False):
    """n phantoms with everything every task needs, as numpy arrays.

    ``training`` varies the synthesis prompts (``training_prompt``) and slightly blurs a
    quarter of the images that understand and ask see, so the finding detectors do not take
    any softness of a rib for a fracture; otherwise prompts are canonical and images clean.

    Findings are independent coin flips, or with ``balanced`` cycle through all combinations.
    Generation examples cycle through the tasks, synthesize four times in six. A synthesize
    example's noise is the phantom's own latent z, which with the findings fixes the target.
    """
    images, soft, labels, boxes, reports = [], [], [], [], []
    questions, answers, tasks, conditions, sources, targets, noise = [], [], [], [], [], [], []
    weights = []
    # Synthesis is by far the hardest generation task to learn: it gets two thirds.
    task_ids = [GENERATE_TASKS[t] for t in
                ("synthesize", "restore", "synthesize", "convert", "synthesize", "synthesize")]
    for i in range(n):
        z, flags, ph = phantoms.sample(r, phantoms.combination(i) if balanced else None)
        f = ph["findings"]
        blurred = training and r.random() < 0.25
        images.append(phantoms.blur(ph["radiograph"], r) if blurred else ph["radiograph"])
        soft.append(ph["soft_tissue"])
        labels.append(flags)
        boxes.append([f[label]["box"] if label in f else [0.0] * 4 for label in phantoms.LABELS])
        reports.append(phantoms.report(f))
        q = QUESTIONS[int(r.integers(len(QUESTIONS)))]
        questions.append(q)
        answers.append(phantoms.answer(q, f))
        task = task_ids[i % len(task_ids)]
        tasks.append(task)
        prompt = training_prompt(flags, r) if training else phantoms.condition_prompt(flags)
        if task == GENERATE_TASKS["synthesize"]:
            conditions.append(prompt)
            sources.append(np.zeros_like(ph["radiograph"]))
            targets.append(ph["radiograph"])
            weights.append(1.0 + SYNTH_FINDING_WEIGHT * finding_mask(f))
            noise.append(z)
        else:
            conditions.append(prompt if r.random() < 0.5 else "")
            source = ph["radiograph"]
            if task == GENERATE_TASKS["restore"]:
                source = phantoms.degrade(source, r)
            sources.append(source)
            targets.append(ph["radiograph"] if task == GENERATE_TASKS["restore"]
                           else ph["soft_tissue"])
            weights.append(np.ones((phantoms.SIZE, phantoms.SIZE)))
            noise.append(r.standard_normal(phantoms.Z_DIM).astype(np.float32))
    boxes = np.array(boxes, dtype=np.float32)
    channel = lambda xs: np.stack(xs)[..., None].astype(np.float32)
    return {
        "images": channel(images), "soft_tissue": channel(soft),
        "labels": np.array(labels, dtype=np.float32),
        "boxes": boxes, "patch_targets": patch_targets(boxes, np.array(labels, bool)),
        "reports": reports, "report_tokens": encode(reports, REPORT_LEN),
        "questions": questions, "question_tokens": encode(questions, QUESTION_LEN),
        "answers": answers, "answer_tokens": encode(answers, ANSWER_LEN),
        "task": np.array(tasks, dtype=np.int32),
        "conditions": conditions, "condition_tokens": encode(conditions, CONDITION_LEN),
        "source_images": channel(sources), "target_images": channel(targets),
        "target_weights": channel(weights),
        "noise": np.stack(noise).astype(np.float32),
    }
