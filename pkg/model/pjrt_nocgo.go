//go:build !cgo

package model

import "errors"

// PJRTAvailable reports whether this binary can load a PJRT plugin (it needs cgo).
const PJRTAvailable = false

func openPJRT(string, *Contract, Options) (Runtime, error) {
	return nil, errors.New("this pacsflow binary was built without cgo, which the pjrt runtime needs to load its plugin: build it with cgo enabled")
}
