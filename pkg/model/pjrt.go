//go:build cgo

package model

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/gomlx/gopjrt/pjrt"
)

// PJRTAvailable reports whether this binary can load a PJRT plugin (it needs cgo).
const PJRTAvailable = true

// openPJRT loads the PJRT plugin of opts, compiles every StableHLO module of dir once (the
// weights are constants of the modules, so they stay on the device with the executables)
// and returns a runtime that pads each batch to the nearest compiled size.
func openPJRT(dir string, c *Contract, opts Options) (Runtime, error) {
	m, mods, err := readStableHLO(dir, c)
	if err != nil {
		return nil, err
	}
	if opts.PJRTPlugin == "" {
		return nil, errors.New("the pjrt runtime needs a PJRT plugin (--pjrt-plugin): xla_cuda_plugin.so of the jax-cuda12-pjrt or jax-cuda13-pjrt wheel for NVIDIA GPUs")
	}
	path, err := filepath.Abs(opts.PJRTPlugin)
	if err == nil {
		_, err = os.Stat(path)
	}
	if err != nil {
		return nil, fmt.Errorf("PJRT plugin %s: %w", opts.PJRTPlugin, err)
	}
	plugin, err := pjrt.GetPlugin(path)
	if err != nil {
		return nil, fmt.Errorf("load PJRT plugin %s: %w", path, err)
	}
	client, err := plugin.NewClient(nil)
	if err != nil {
		return nil, fmt.Errorf("PJRT plugin %s: no client (is its device present?): %w", path, err)
	}
	r := &batchedRuntime{sigs: map[string]*batchedSignature{}, close: client.Destroy}
	for _, mod := range mods {
		s := r.sigs[mod.signature]
		if s == nil {
			s = &batchedSignature{def: c.Signatures[mod.signature], inputs: m.Signatures[mod.signature].Inputs, execs: map[int]executor{}}
			r.sigs[mod.signature] = s
		}
		exec, err := client.Compile().WithStableHLO(mod.code).Done()
		if err != nil {
			_ = client.Destroy()
			return nil, fmt.Errorf("compile %s on %s: %w", mod.path, client.Platform(), err)
		}
		s.execs[mod.batch] = &pjrtExecutor{client: client, exec: exec}
		s.sizes = append(s.sizes, mod.batch)
	}
	for _, s := range r.sigs {
		slices.Sort(s.sizes)
	}
	return r, nil
}

// pjrtExecutor runs one compiled module through PJRT: only the inputs go to the device and
// only the results come back.
type pjrtExecutor struct {
	client *pjrt.Client
	exec   *pjrt.LoadedExecutable
}

func (e *pjrtExecutor) execute(inputs []*Tensor) ([]*Tensor, error) {
	bufs := make([]*pjrt.Buffer, 0, len(inputs))
	defer func() {
		for _, b := range bufs {
			_ = b.Destroy()
		}
	}()
	for _, t := range inputs {
		dims := make([]int, len(t.Shape))
		for i, d := range t.Shape {
			dims[i] = int(d)
		}
		var flat any = t.F32
		if t.I32 != nil {
			flat = t.I32
		}
		b, err := e.client.BufferFromHost().FromFlatDataWithDimensions(flat, dims).Done()
		if err != nil {
			return nil, fmt.Errorf("copy an input to the device: %w", err)
		}
		bufs = append(bufs, b)
	}
	res, err := e.exec.Execute(bufs...).DonateNone().Done()
	if err != nil {
		return nil, fmt.Errorf("execute: %w", err)
	}
	bufs = append(bufs, res...)
	out := make([]*Tensor, len(res))
	for i, b := range res {
		flat, dims, err := b.ToFlatDataAndDimensions()
		if err != nil {
			return nil, fmt.Errorf("copy a result from the device: %w", err)
		}
		t := &Tensor{Shape: make([]int64, len(dims))}
		for j, d := range dims {
			t.Shape[j] = int64(d)
		}
		switch v := flat.(type) {
		case []float32:
			t.F32 = v
		case []int32:
			t.I32 = v
		default:
			return nil, fmt.Errorf("a result of type %T: the contract has float32 and int32 only", flat)
		}
		out[i] = t
	}
	return out, nil
}
