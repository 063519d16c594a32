"""The pacsflow reference network: one transformer backbone, three task adapters.

In the spirit of HealthGPT (unified medical vision-language model with heterogeneous LoRA):

- ONE shared pre-norm transformer backbone runs over a sequence of image-patch tokens (8x8
  patches of the 64x64 image: 64 tokens, from a small convolutional stem) followed by text
  tokens.
- H-LoRA: every backbone projection (q, k, v, o, MLP up and down) carries one low-rank adapter
  per task -- ``understand``, ``ask``, ``generate``. A HARD router picks the adapter set from
  the task: each signature always runs with its own set, merged into the projection weights
  (W + A B), so no routing happens per token and nothing is mixed.
- Hierarchical visual perception: the understanding heads (findings, boxes, report, answers)
  read the DEEP features (after the last layer); the image decoder reads SHALLOW features
  (after ``gen_layers`` = 2 of 4 layers), which keep more pixel detail.
- Text is a prefix LM: image (and question or condition) tokens form a prefix that sees itself
  in both directions; the tokens being generated see the whole prefix and earlier tokens only.
  Because the prefix never sees the generated tokens, its keys and values are computed once
  and reused by every greedy decoding step.

Greedy decoding runs in the graph with fixed shapes (a ``tf.while_loop`` over a [B,T] token
buffer, written with one-hot masks), and everything is plain math, so the signatures convert
to StableHLO.
"""

import math

import tensorflow as tf

import pacsflow_contract as pc
from phantoms import LABELS
from pacsflow_contract import BOS_ID, EOS_ID, PAD_ID, UNK_ID

IMAGE_SIZE = 64
CHANNELS = 1
PATCH = 8
GRID = IMAGE_SIZE // PATCH
NUM_PATCHES = GRID * GRID
NUM_LABELS = len(LABELS)
REPORT_LEN, QUESTION_LEN, ANSWER_LEN, CONDITION_LEN, NOISE_DIM = 32, 12, 8, 12, 16
TASKS = ("understand", "ask", "generate")
GENERATE_TASKS = {"synthesize": 0, "restore": 1, "convert": 2}
PROJECTIONS = ("q", "k", "v", "o", "up", "down")

IMAGE_SPEC = tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, CHANNELS], tf.float32)


def _gelu(x):
    # The tanh form: erf-based GELU lowers to an Erfc op, which converters handle less well.
    return tf.nn.gelu(x, approximate=True)


class _Init:
    """Deterministic initializer: each new tensor gets the next stateless seed."""

    def __init__(self, seed):
        self.seed, self.count = seed, 0

    def normal(self, shape, std):
        self.count += 1
        return tf.Variable(std * tf.random.stateless_normal(shape, [self.seed, self.count]))

    @staticmethod
    def const(shape, value):
        return tf.Variable(tf.fill(shape, float(value)))


class LayerNorm(tf.Module):
    def __init__(self, d, init):
        super().__init__()
        self.gamma, self.beta = init.const([d], 1.0), init.const([d], 0.0)

    def __call__(self, x):
        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + 1e-5) * self.gamma + self.beta


class Block(tf.Module):
    """A pre-norm transformer block whose projections carry one LoRA adapter per task."""

    def __init__(self, d, heads, ff, rank, tasks, init):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = LayerNorm(d, init), LayerNorm(d, init)
        shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "up": (d, ff),
                  "down": (ff, d)}
        self.weight = {n: init.normal(s, 1.0 / math.sqrt(s[0])) for n, s in shapes.items()}
        self.bias = {n: init.const([s[1]], 0.0) for n, s in shapes.items()}
        # B starts at zero so every adapter starts as no change at all (standard LoRA).
        self.lora_a = {t: {n: init.normal((s[0], rank), 1.0 / math.sqrt(s[0]))
                           for n, s in shapes.items()} for t in tasks}
        self.lora_b = {t: {n: init.const((rank, s[1]), 0.0) for n, s in shapes.items()}
                       for t in tasks}
        self.scale = 2.0 / rank

    def merged(self, task):
        """The hard router: the projections with this task's adapter merged in."""
        return {n: self.weight[n] + self.scale * tf.matmul(self.lora_a[task][n],
                                                           self.lora_b[task][n])
                for n in PROJECTIONS}

    def _split(self, x):
        n, d = x.shape[1], x.shape[2]
        x = tf.reshape(x, [-1, n, self.heads, d // self.heads])
        return tf.transpose(x, [0, 2, 1, 3])

    def _attend(self, q, k, v, mask):
        d = q.shape[-1]
        q, k, v = self._split(q), self._split(k), self._split(v)
        scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(d // self.heads)
        if mask is not None:
            scores += mask
        out = tf.matmul(tf.nn.softmax(scores, axis=-1), v)
        out = tf.transpose(out, [0, 2, 1, 3])
        return tf.reshape(out, [-1, out.shape[1], d])

    def _project(self, w, name, x):
        return tf.matmul(x, w[name]) + self.bias[name]

    def __call__(self, x, w, prefix_kv=None, mask=None):
        """One block. With ``prefix_kv`` the tokens also attend to a cached prefix.

        Returns the new hidden states and this layer's (k, v) for x, for later reuse.
        """
        h = self.norm1(x)
        q, k, v = (self._project(w, n, h) for n in ("q", "k", "v"))
        keys, values = k, v
        if prefix_kv is not None:
            keys = tf.concat([prefix_kv[0], k], axis=1)
            values = tf.concat([prefix_kv[1], v], axis=1)
        x = x + self._project(w, "o", self._attend(q, keys, values, mask))
        h = _gelu(self._project(w, "up", self.norm2(x)))
        return x + self._project(w, "down", h), (k, v)


class Conv(tf.Module):
    """A 3x3 convolution, SAME padding."""

    def __init__(self, cin, cout, init, stride=1, zero=False):
        super().__init__()
        std = 0.0 if zero else math.sqrt(2.0 / (9 * cin))
        self.kernel = init.normal((3, 3, cin, cout), std)
        self.bias = init.const([cout], 0.0)
        self.stride = stride

    def __call__(self, x):
        return tf.nn.conv2d(x, self.kernel, self.stride, "SAME") + self.bias


def patchify(images):
    """[B,H,W,C] -> [B, patches, PATCH*PATCH*C], patches in row-major grid order."""
    x = tf.reshape(images, [-1, GRID, PATCH, GRID, PATCH, CHANNELS])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    return tf.reshape(x, [-1, NUM_PATCHES, PATCH * PATCH * CHANNELS])


def unpatchify(patches):
    x = tf.reshape(patches, [-1, GRID, GRID, PATCH, PATCH, CHANNELS])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    return tf.reshape(x, [-1, IMAGE_SIZE, IMAGE_SIZE, CHANNELS])


def _patch_centers():
    """Normalized (y, x) centre of each patch, for the box head's soft-argmax."""
    idx = tf.range(NUM_PATCHES)
    y = (tf.cast(idx // GRID, tf.float32) + 0.5) / GRID
    x = (tf.cast(idx % GRID, tf.float32) + 0.5) / GRID
    return tf.stack([y, x], axis=-1)


def causal_mask(prefix_len, length):
    """Additive mask for generated text: all of the prefix, then itself and earlier tokens."""
    allowed = tf.linalg.band_part(tf.ones([length, length]), -1, 0)
    allowed = tf.concat([tf.ones([length, prefix_len]), allowed], axis=1)
    return (1.0 - allowed) * -1e9


class PacsflowNet(tf.Module):
    """The reference network. ``understand``, ``ask`` and ``generate`` are its signatures."""

    def __init__(self, vocab_size, seed=0, d=96, heads=4, layers=4, ff=192, rank=8,
                 gen_layers=2):
        super().__init__(name="pacsflow_reference")
        init = _Init(seed)
        self.vocab_size, self.gen_layers = vocab_size, gen_layers
        pixels = PATCH * PATCH * CHANNELS
        # Patch tokens: a small convolutional stem (64 -> 8 by three stride-2 steps: local
        # detail such as a rib gap is seen at full resolution) plus a linear embedding of the
        # raw 8x8 patch, which keeps the pixels themselves within the tokens' reach.
        self.stem = [Conv(CHANNELS, 16, init), Conv(16, 32, init, 2), Conv(32, 64, init, 2),
                     Conv(64, d, init, 2)]
        self.patch_embed = init.normal((pixels, d), 1.0 / math.sqrt(pixels))
        self.patch_bias = init.const([d], 0.0)
        self.image_pos = init.normal((NUM_PATCHES, d), 0.02)
        self.token_embed = init.normal((vocab_size, d), 0.02)
        self.text_pos = init.normal((max(REPORT_LEN, QUESTION_LEN, CONDITION_LEN), d), 0.02)
        self.segment = init.normal((3, d), 0.02)  # image, prompt text, generated text
        # Generation's global conditioning: an MLP of (noise, task, mean prompt embedding)
        # added to every image token, so each patch can work out from its position what the
        # latent and the prompt put there.
        cond_in = NOISE_DIM + len(GENERATE_TASKS) + d
        self.cond_hidden = init.normal((cond_in, 2 * d), 1.0 / math.sqrt(cond_in))
        self.cond_hidden_bias = init.const([2 * d], 0.0)
        self.cond_out = init.normal((2 * d, d), 1.0 / math.sqrt(2 * d))
        # Generation stops at the shallow layers, so deeper blocks carry no generate adapter.
        self.blocks = [Block(d, heads, ff, rank,
                             TASKS if i < gen_layers else ("understand", "ask"), init)
                       for i in range(layers)]
        self.final_norm = LayerNorm(d, init)
        self.label_weight = init.normal((NUM_LABELS, d), 1.0 / math.sqrt(d))
        self.label_bias = init.const([NUM_LABELS], 0.0)
        self.box_hidden = init.normal((d, d), 1.0 / math.sqrt(d))
        self.box_hidden_bias = init.const([d], 0.0)
        self.box_out = init.normal((NUM_LABELS, d, 4), 0.01)
        self.box_out_bias = init.const([NUM_LABELS, 4], 0.0)
        self.pixel_norm = LayerNorm(d, init)
        self.pixel_out = init.const((d, pixels), 0.0)
        self.pixel_bias = init.const([pixels], 0.0)
        # Full-resolution refinement over (source, coarse output); the last layer starts at
        # zero so an untrained decoder returns its source unchanged.
        self.refine = [Conv(2 * CHANNELS, 16, init), Conv(16, 16, init),
                       Conv(16, CHANNELS, init, zero=True)]

    # --- embeddings -------------------------------------------------------------------------

    def embed_image(self, images):
        x = images
        for i, conv in enumerate(self.stem):
            x = conv(x) if i == len(self.stem) - 1 else _gelu(conv(x))
        x = tf.reshape(x, [-1, NUM_PATCHES, x.shape[-1]])
        x += tf.matmul(patchify(images), self.patch_embed) + self.patch_bias
        return x + self.image_pos + self.segment[0]

    def embed_text(self, tokens, segment):
        valid = tf.logical_and(tokens >= 0, tokens < self.vocab_size)
        tokens = tf.where(valid, tokens, UNK_ID)  # ids outside the vocabulary read as unk
        n = tokens.shape[1]
        return tf.gather(self.token_embed, tokens) + self.text_pos[:n] + self.segment[segment]

    # --- backbone ---------------------------------------------------------------------------

    def prefix(self, x, task, layers):
        """Runs the first ``layers`` blocks over a prefix; returns states and per-layer (k,v)."""
        cache = []
        for block in self.blocks[:layers]:
            x, kv = block(x, block.merged(task))
            cache.append(kv)
        return x, cache

    def text(self, tokens, cache, task):
        """Deep features of generated-text tokens (teacher-forced inputs) over a cached prefix."""
        y = self.embed_text(tokens, 2)
        mask = causal_mask(cache[0][0].shape[1], tokens.shape[1])
        for block, kv in zip(self.blocks, cache):
            y, _ = block(y, block.merged(task), prefix_kv=kv, mask=mask)
        return self.final_norm(y)

    def logits(self, features):
        """LM head, tied to the token embedding."""
        return tf.matmul(features, self.token_embed, transpose_b=True)

    def greedy(self, cache, task, length):
        """Greedy decoding with a fixed [B,length] buffer; pad after the first eos.

        Incremental: each step runs only the newest token through the blocks. It attends to
        the prefix cache and to the keys and values of the tokens generated before it, which
        per-layer [B,length,d] buffers keep (written with one-hot masks, so every shape is
        fixed). That is what ``text`` computes for the newest token, as in training, without
        recomputing the earlier tokens at every step: ``length`` times less work per step.

        Shapes inside the loop derive from its own tensors only (no captured batch size), so
        XLA and the StableHLO converter see static shapes.
        """
        banned = tf.one_hot([PAD_ID, BOS_ID, UNK_ID], self.vocab_size)
        banned = tf.reduce_sum(banned, axis=0) * -1e9
        prefix_len = cache[0][0].shape[1]

        def step(i, out, done, buffers):
            inputs = tf.pad(out[:, :-1], [[0, 0], [1, 0]], constant_values=BOS_ID)
            at_i = tf.one_hot(i, length)
            y = tf.einsum("btd,t->bd", self.embed_text(inputs, 2), at_i)[:, None, :]
            # Keys: the prefix, the buffer (tokens before i only), then the token itself,
            # which the block appends.
            earlier = tf.cast(tf.range(length) < i, tf.float32)
            allowed = tf.concat([tf.ones([prefix_len]), earlier, tf.ones([1])], axis=0)
            mask = (1.0 - allowed) * -1e9
            write = at_i[None, :, None]
            updated = []
            for block, (pk, pv), (bk, bv) in zip(self.blocks, cache, buffers):
                y, (k, v) = block(y, block.merged(task), prefix_kv=(tf.concat([pk, bk], axis=1),
                                                                    tf.concat([pv, bv], axis=1)),
                                  mask=mask)
                updated.append((bk * (1.0 - write) + k * write, bv * (1.0 - write) + v * write))
            features = self.final_norm(y)[:, 0]
            token = tf.cast(tf.argmax(self.logits(features) + banned, axis=-1), tf.int32)
            token = tf.where(done, PAD_ID, token)
            column = tf.cast(at_i, tf.int32)[None, :]
            out = out * (1 - column) + token[:, None] * column
            return i + 1, out, tf.logical_or(done, tf.equal(token, EOS_ID)), updated

        column = tf.zeros_like(cache[0][0][:, :1, 0], dtype=tf.int32)  # [B,1], batch-shaped
        empty = tf.zeros_like(cache[0][0][:, :1, :]) + tf.zeros([1, length, 1])  # [B,length,d]
        start = (tf.constant(0), column + tf.zeros([1, length], tf.int32),
                 tf.zeros_like(column[:, 0], dtype=tf.bool), [(empty, empty) for _ in self.blocks])
        _, out, _, _ = tf.while_loop(lambda i, out, done, buffers: i < length, step, start,
                                     maximum_iterations=length)
        return out

    # --- understanding ----------------------------------------------------------------------

    def understand_features(self, image_tokens):
        deep, cache = self.prefix(image_tokens, "understand", len(self.blocks))
        return self.final_norm(deep), cache

    def finding_heads(self, deep):
        """Per-patch finding scores pooled by a smooth maximum -> logits, boxes, the scores.

        A finding is small and local, so each patch scores each label and the image's logit
        is log-mean-exp over patches (multiple-instance pooling: the gradient goes to the
        patches that look most like the finding). The same scores, softmaxed over patches,
        locate it: box centres are the score-weighted patch centres plus a small learned
        offset (soft-argmax), box sizes come from the features pooled the same way.
        """
        scores = tf.einsum("bnd,kd->bkn", deep, self.label_weight) + self.label_bias[:, None]
        logit = tf.reduce_logsumexp(scores, axis=-1) - math.log(NUM_PATCHES)
        attention = tf.nn.softmax(scores, axis=-1)
        pooled = tf.einsum("bkn,bnd->bkd", attention, deep)
        hidden = _gelu(tf.matmul(pooled, self.box_hidden) + self.box_hidden_bias)
        raw = tf.einsum("bkd,kdf->bkf", hidden, self.box_out) + self.box_out_bias
        center = tf.einsum("bkn,nc->bkc", attention, _patch_centers())
        center += 0.15 * tf.tanh(raw[..., :2])
        half = 0.5 * tf.sigmoid(raw[..., 2:] - 1.5)
        boxes = tf.clip_by_value(tf.concat([center - half, center + half], axis=-1), 0.0, 1.0)
        return logit, boxes, scores

    # --- asking -----------------------------------------------------------------------------

    def ask_cache(self, image_tokens, question_tokens):
        x = tf.concat([image_tokens, self.embed_text(question_tokens, 1)], axis=1)
        return self.prefix(x, "ask", len(self.blocks))[1]

    # --- generation -------------------------------------------------------------------------

    def conditioning(self, task, condition_tokens, noise):
        """[B,d] global conditioning vector for generation."""
        real = tf.cast(tf.logical_and(condition_tokens != PAD_ID, condition_tokens != EOS_ID),
                       tf.float32)
        embedded = self.embed_text(condition_tokens, 1)
        prompt = (tf.reduce_sum(embedded * real[..., None], axis=1) /
                  tf.maximum(tf.reduce_sum(real, axis=1, keepdims=True), 1.0))
        x = tf.concat([noise, tf.one_hot(task, len(GENERATE_TASKS)), prompt], axis=-1)
        return tf.matmul(_gelu(tf.matmul(x, self.cond_hidden) + self.cond_hidden_bias),
                         self.cond_out)

    def generate_images(self, task, condition_tokens, source_images, noise):
        """Shallow features of the image tokens -> pixels, refined, added to the source.

        The output is a residual on the source (zeros for synthesize), so restore and convert
        only learn the change; the convolutional refinement supplies per-pixel detail (noise
        removal) that a linear patch decoder would struggle to.

        Unclipped, so that training gets gradients outside [0,1]; the signature clips.
        """
        x = self.embed_image(source_images)
        x += self.conditioning(task, condition_tokens, noise)[:, None]
        x = tf.concat([x, self.embed_text(condition_tokens, 1)], axis=1)
        shallow, _ = self.prefix(x, "generate", self.gen_layers)
        patches = tf.matmul(self.pixel_norm(shallow[:, :NUM_PATCHES]), self.pixel_out)
        coarse = unpatchify(patches + self.pixel_bias)
        x = tf.concat([source_images, coarse], axis=-1)
        for conv in self.refine[:-1]:
            x = _gelu(conv(x))
        return source_images + coarse + self.refine[-1](x)

    # --- the contract's signatures ----------------------------------------------------------

    @tf.function(input_signature=[IMAGE_SPEC])
    def understand(self, images):
        deep, cache = self.understand_features(self.embed_image(images))
        logit, boxes, _ = self.finding_heads(deep)
        return {"probabilities": tf.sigmoid(logit), "boxes": boxes,
                "report_tokens": self.greedy(cache, "understand", REPORT_LEN)}

    @tf.function(input_signature=[IMAGE_SPEC,
                                  tf.TensorSpec([None, QUESTION_LEN], tf.int32)])
    def ask(self, images, question_tokens):
        cache = self.ask_cache(self.embed_image(images), question_tokens)
        return {"answer_tokens": self.greedy(cache, "ask", ANSWER_LEN)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None, CONDITION_LEN], tf.int32),
                                  IMAGE_SPEC,
                                  tf.TensorSpec([None, NOISE_DIM], tf.float32)])
    def generate(self, task, condition_tokens, source_images, noise):
        images = self.generate_images(task, condition_tokens, source_images, noise)
        return {"images": tf.clip_by_value(images, 0.0, 1.0)}


def contract_document():
    """The reference model's model-contract.json."""
    names = list(TASKS)
    return pc.contract(
        name="pacsflow-reference",
        version="1.0.0",
        description=("Unified vision-language transformer (HealthGPT-style): one shared "
                     "backbone over 8x8 image patches and word tokens, per-task LoRA "
                     "adapters chosen by a hard task router; findings, boxes and report "
                     "from deep features, image synthesis/restoration/conversion from "
                     "shallow features."),
        intended_use=("Reference model for exercising the pacsflow pipeline, trained only on "
                      "synthetic chest phantoms. Not for clinical use: its outputs say "
                      "nothing about real patients."),
        labels=list(LABELS),
        signatures=pc.signature_specs(
            names, (IMAGE_SIZE, IMAGE_SIZE), CHANNELS, NUM_LABELS, REPORT_LEN, QUESTION_LEN,
            ANSWER_LEN, CONDITION_LEN, NOISE_DIM),
        image_size=(IMAGE_SIZE, IMAGE_SIZE), channels=CHANNELS, value_range=(0, 1),
        window=(2048, 4096), modalities=("CR", "DX"),
        generate_tasks=GENERATE_TASKS,
        generate_tasks_detail={"convert": "soft-tissue (bone-suppressed) radiograph"},
    )


def export(net, out_dir, tokenizer):
    """Saves the network with its three signatures and the contract assets."""
    pc.export(net, out_dir, {n: getattr(net, n) for n in TASKS}, contract_document(), tokenizer)
