"""Export a trained pacsflow reference model again with the current network code.

The weights are read from an exported model's SavedModel (its variables are a checkpoint of
the network object), so a change to how the signatures compute (not to what they learn) needs
no retraining:

    .venv/bin/python model/reexport.py --from model/reference --out /tmp/reference-new

The network's structure must be the one the weights were trained with: a variable the export
does not hold is an error.
"""

import argparse
import os

import tensorflow as tf

import data
import network


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="src", required=True, help="an exported model directory")
    ap.add_argument("--out", required=True, help="the new export directory")
    args = ap.parse_args()
    net = network.PacsflowNet(len(data.TOKENIZER))
    status = tf.train.Checkpoint(root=net).read(os.path.join(args.src, "variables", "variables"))
    status.assert_existing_objects_matched()
    network.export(net, args.out, data.TOKENIZER)
    print(f"exported {args.out} with the weights of {args.src}", flush=True)


if __name__ == "__main__":
    main()
