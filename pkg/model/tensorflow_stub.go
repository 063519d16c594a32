//go:build !tensorflow

package model

import "errors"

// TensorFlowAvailable reports whether this binary links TensorFlow's C library.
const TensorFlowAvailable = false

func openTensorFlow(string, map[string]SavedSignature, *Contract, Options) (Runtime, error) {
	return nil, errors.New("this pacsflow binary was built without TensorFlow: build it with ./scripts/build.sh (go build -tags tensorflow with the C library from the tensorflow-cpu wheel)")
}
