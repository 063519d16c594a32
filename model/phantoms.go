// Package phantoms carries the phantom generator model/phantoms.py inside the Go binaries that
// import it, so that pacsflow synth renders test studies without the repository checkout. The
// generator is the one the reference model was trained on: embedding it, rather than porting
// it, keeps the synthetic studies' ground truth the training data's.
package phantoms

import _ "embed"

// Source is the text of model/phantoms.py: run it with a Python 3 that has numpy
// (python phantoms.py --help).
//
//go:embed phantoms.py
var Source string
