"""The pacsflow model contract (schemas/model-contract.md), version 1, for Python exporters.

Three pieces, shared by the reference network and by anyone wrapping another network:

- ``Tokenizer``: the contract's word tokenizer (encode to a fixed length with eos and pad,
  decode the way pacsflow renders text);
- ``signature_specs`` / ``contract``: the ``model-contract.json`` document;
- ``export``: saves a ``tf.Module`` with its named signatures as a SavedModel, checks every
  saved signature against the contract's table, and writes ``assets/model-contract.json`` and
  ``assets/vocab.txt``.
"""

import json
import os
import re

import tensorflow as tf

CONTRACT_VERSION = "1"
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
PUNCTUATION = ".,;:?"
SENTENCE_ENDS = ".?"
_WORD = re.compile(r"[a-z0-9]+|[.,;:?]")


class Tokenizer:
    """Word-level tokenizer; ids are line numbers of the vocabulary (specials first)."""

    def __init__(self, vocabulary, lowercase=True):
        self.vocabulary = list(vocabulary)
        if tuple(self.vocabulary[:4]) != SPECIAL_TOKENS:
            raise ValueError(f"vocabulary must start with {SPECIAL_TOKENS}")
        self.ids = {w: i for i, w in enumerate(self.vocabulary)}
        self.lowercase = lowercase

    @classmethod
    def from_words(cls, words, lowercase=True):
        return cls(list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS],
                   lowercase)

    @classmethod
    def from_texts(cls, texts, lowercase=True):
        """A vocabulary of every word in the texts, in order of first appearance."""
        words = []
        for text in texts:
            for w in _WORD.findall(text.lower() if lowercase else text):
                if w not in words:
                    words.append(w)
        return cls.from_words(words, lowercase)

    def __len__(self):
        return len(self.vocabulary)

    def words(self, text):
        return _WORD.findall(text.lower() if self.lowercase else text)

    def encode(self, text, length):
        """Tokens then eos, truncated to length keeping eos last, right-padded with pad."""
        ids = [self.ids.get(w, UNK_ID) for w in self.words(text)][: length - 1] + [EOS_ID]
        return ids + [PAD_ID] * (length - len(ids))

    def decode(self, ids):
        """Text up to the first eos: no pad/bos/unk, punctuation attached, sentences capitalized."""
        words = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i in (PAD_ID, BOS_ID, UNK_ID) or not 0 <= i < len(self.vocabulary):
                continue
            words.append(self.vocabulary[i])
        text, start = "", True
        for w in words:
            if w in PUNCTUATION:
                text += w
            else:
                text += (" " if text else "") + (w[:1].upper() + w[1:] if start else w)
            start = w in SENTENCE_ENDS if w in PUNCTUATION else False
        return text


def signature_specs(names, image_size, channels, num_labels, report_len=None,
                    question_len=None, answer_len=None, condition_len=None, noise_dim=None):
    """The contract table's inputs and outputs for the listed signatures (batch is -1)."""
    h, w = image_size
    image = {"dtype": "float32", "shape": [-1, h, w, channels]}
    table = {
        "understand": lambda: {
            "inputs": {"images": image},
            "outputs": {
                "probabilities": {"dtype": "float32", "shape": [-1, num_labels]},
                "boxes": {"dtype": "float32", "shape": [-1, num_labels, 4]},
                "report_tokens": {"dtype": "int32", "shape": [-1, report_len]},
            },
        },
        "ask": lambda: {
            "inputs": {"images": image,
                       "question_tokens": {"dtype": "int32", "shape": [-1, question_len]}},
            "outputs": {"answer_tokens": {"dtype": "int32", "shape": [-1, answer_len]}},
        },
        "generate": lambda: {
            "inputs": {
                "task": {"dtype": "int32", "shape": [-1]},
                "condition_tokens": {"dtype": "int32", "shape": [-1, condition_len]},
                "source_images": image,
                "noise": {"dtype": "float32", "shape": [-1, noise_dim]},
            },
            "outputs": {"images": image},
        },
    }
    unknown = set(names) - set(table)
    if unknown:
        raise ValueError(f"not contract signatures: {sorted(unknown)}")
    return {n: table[n]() for n in names}


def contract(name, version, description, intended_use, labels, signatures, image_size=(64, 64),
             channels=1, value_range=(0, 1), window=(2048, 4096), modalities=("CR", "DX"),
             generate_tasks=None, generate_tasks_detail=None):
    """The model-contract.json document; ``signatures`` comes from ``signature_specs``."""
    doc = {
        "contract_version": CONTRACT_VERSION,
        "model": {"name": name, "version": version, "description": description,
                  "intended_use": intended_use},
        "labels": list(labels),
        "preprocessing": {
            "image_size": list(image_size),
            "channels": channels,
            "value_range": list(value_range),
            "window": {"center": window[0], "width": window[1]},
            "accepted_modalities": list(modalities),
        },
        "tokenizer": {"kind": "word", "vocabulary": "vocab.txt", "lowercase": True,
                      "pad_id": PAD_ID, "bos_id": BOS_ID, "eos_id": EOS_ID, "unk_id": UNK_ID},
        "signatures": signatures,
    }
    if "generate" in signatures:
        if not generate_tasks:
            raise ValueError("generate_tasks is required when generate is listed")
        doc["generate_tasks"] = dict(generate_tasks)
        doc["generate_tasks_detail"] = dict(generate_tasks_detail or {})
    return doc


def write_contract(out_dir, doc, tokenizer):
    """Writes assets/model-contract.json and assets/vocab.txt into a model directory."""
    assets = os.path.join(out_dir, "assets")
    os.makedirs(assets, exist_ok=True)
    with open(os.path.join(assets, "model-contract.json"), "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    with open(os.path.join(assets, "vocab.txt"), "w") as f:
        f.write("\n".join(tokenizer.vocabulary) + "\n")


def _tensor_spec(spec):
    return {"dtype": spec.dtype.name,
            "shape": [-1 if d is None else d for d in spec.shape.as_list()]}


def check_signature(name, function, expected):
    """Fails unless a concrete function has exactly the contract's inputs and outputs."""
    inputs = {k: _tensor_spec(v) for k, v in function.structured_input_signature[1].items()}
    outputs = {k: _tensor_spec(v) for k, v in function.structured_outputs.items()}
    for kind, got, want in (("inputs", inputs, expected["inputs"]),
                            ("outputs", outputs, expected["outputs"])):
        if got != want:
            raise ValueError(f"signature {name} {kind}: got {got}, contract wants {want}")


def export(module, out_dir, signatures, doc, tokenizer, keras_models=()):
    """Saves module as a SavedModel with exactly these signatures, then the contract assets.

    ``signatures`` maps contract names to ``tf.function``s with an input signature whose
    argument names are the contract's input names and which return a dict of the output
    names. The saved model is loaded back and checked against the contract before the assets
    are written, so a directory with a contract is one pacsflow accepts.

    When the signatures call Keras 3 models, name them in ``keras_models``: they are saved
    through Keras' own ``ExportArchive``, which tracks their variables so that TensorFlow's
    C++ loader (the one pacsflow's Go runtime and TF-Serving use) restores them.
    ``tf.saved_model.save`` on a plain ``tf.Module`` holding Keras 3 models writes a SavedModel
    that Python loads but the C++ loader leaves with uninitialized variables.
    """
    if set(signatures) != set(doc["signatures"]):
        raise ValueError(f"signatures {sorted(signatures)} differ from the contract's "
                         f"{sorted(doc['signatures'])}")
    if keras_models:
        import keras  # only wrapped Keras models need it
        archive = keras.export.ExportArchive()
        for m in keras_models:
            archive.track(m)
        for n, f in signatures.items():
            archive.add_endpoint(n, f)
        archive.write_out(out_dir, verbose=False)
    else:
        concrete = {n: f.get_concrete_function() for n, f in signatures.items()}
        tf.saved_model.save(module, out_dir, signatures=concrete)
    saved = tf.saved_model.load(out_dir).signatures
    # ExportArchive adds serving_default; pacsflow ignores signatures the contract does not list.
    missing = set(doc["signatures"]) - set(saved)
    if missing:
        raise ValueError(f"the SavedModel lacks signatures {sorted(missing)}")
    for n in doc["signatures"]:
        check_signature(n, saved[n], doc["signatures"][n])
    write_contract(out_dir, doc, tokenizer)
