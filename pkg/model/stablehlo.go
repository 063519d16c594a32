package model

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
)

// StableHLODir is where model/export_stablehlo.py writes a model's StableHLO modules, in the
// model's directory.
const StableHLODir = "stablehlo"

// stableHLOFormat is the manifest format this package reads.
const stableHLOFormat = "pacsflow-stablehlo/1"

// StableHLOManifest describes a model's StableHLO modules (stablehlo/manifest.json): one per
// signature and batch size, derived from the SavedModel whose saved_model.pb has the SHA-256
// it records.
type StableHLOManifest struct {
	Format           string `json:"format"`
	SavedModelSHA256 string `json:"saved_model_sha256"`
	Converter        string `json:"converter"`
	BatchSizes       []int  `json:"batch_sizes"`
	Signatures       map[string]struct {
		// Inputs are the signature's inputs in the order of the module's arguments.
		Inputs []string `json:"inputs"`
		// Modules maps a batch size (decimal) to its module's file name.
		Modules map[string]string `json:"modules"`
	} `json:"signatures"`
}

// stableHLOModule is one signature's module for one batch size, its bytes read.
type stableHLOModule struct {
	signature string
	batch     int
	path      string
	code      []byte
}

// readStableHLO reads dir's StableHLO manifest and modules and checks them against the
// contract and the SavedModel they must derive from.
func readStableHLO(dir string, c *Contract) (*StableHLOManifest, []stableHLOModule, error) {
	sdir := filepath.Join(dir, StableHLODir)
	b, err := os.ReadFile(filepath.Join(sdir, "manifest.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("no StableHLO modules in %s: derive them with model/export_stablehlo.py --model %s", sdir, dir)
	}
	if err != nil {
		return nil, nil, err
	}
	var m StableHLOManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", filepath.Join(sdir, "manifest.json"), err)
	}
	if m.Format != stableHLOFormat {
		return nil, nil, fmt.Errorf("%s: format %q, this pacsflow reads %q", filepath.Join(sdir, "manifest.json"), m.Format, stableHLOFormat)
	}
	pb, err := os.ReadFile(filepath.Join(dir, "saved_model.pb"))
	if err != nil {
		return nil, nil, err
	}
	if sha256Hex(pb) != m.SavedModelSHA256 {
		return nil, nil, fmt.Errorf("the StableHLO modules in %s were derived from another export of the model: derive them again with model/export_stablehlo.py --model %s", sdir, dir)
	}
	var mods []stableHLOModule
	for _, name := range slices.Sorted(maps.Keys(c.Signatures)) {
		def := c.Signatures[name]
		s, ok := m.Signatures[name]
		if !ok {
			return nil, nil, fmt.Errorf("%s: no modules for signature %s", sdir, name)
		}
		if !slices.Equal(slices.Sorted(slices.Values(s.Inputs)), slices.Sorted(maps.Keys(def.Inputs))) {
			return nil, nil, fmt.Errorf("%s: signature %s takes %v, the contract says %v", sdir, name, s.Inputs, slices.Sorted(maps.Keys(def.Inputs)))
		}
		if err := distinctOutputs(name, def); err != nil {
			return nil, nil, err
		}
		for key, file := range s.Modules {
			n, err := strconv.Atoi(key)
			if err != nil || n < 1 {
				return nil, nil, fmt.Errorf("%s: signature %s: batch size %q", sdir, name, key)
			}
			path := filepath.Join(sdir, filepath.Base(file))
			code, err := os.ReadFile(path)
			if err != nil {
				return nil, nil, err
			}
			mods = append(mods, stableHLOModule{signature: name, batch: n, path: path, code: code})
		}
	}
	return &m, mods, nil
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// distinctOutputs refuses a signature two of whose outputs have the same dtype and shape:
// a module's results come in the converter's order, and are told apart by those.
func distinctOutputs(sig string, def SignatureDef) error {
	seen := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(def.Outputs)) {
		key := def.Outputs[name].String() + def.Outputs[name].DType
		if other, ok := seen[key]; ok {
			return fmt.Errorf("signature %s: outputs %s and %s have the same dtype and shape, which a StableHLO module's results cannot tell apart", sig, other, name)
		}
		seen[key] = name
	}
	return nil
}

// executor runs one compiled module: inputs in the module's argument order, each with the
// module's batch size; results in the module's order.
type executor interface {
	execute(inputs []*Tensor) ([]*Tensor, error)
}

// batchedSignature runs a signature on modules compiled for fixed batch sizes.
type batchedSignature struct {
	def    SignatureDef
	inputs []string         // module argument order
	execs  map[int]executor // by batch size
	sizes  []int            // the batch sizes, ascending
}

// batchedRuntime is a Runtime over fixed-batch modules: a batch is cut into chunks of at
// most the largest compiled size, each padded with zeros to the smallest size that holds
// it, and the results trimmed and joined again.
type batchedRuntime struct {
	sigs  map[string]*batchedSignature
	close func() error
}

func (r *batchedRuntime) Close() error { return r.close() }

func (r *batchedRuntime) Run(_ context.Context, signature string, inputs map[string]*Tensor) (map[string]*Tensor, error) {
	s, ok := r.sigs[signature]
	if !ok {
		return nil, fmt.Errorf("no signature %q", signature)
	}
	if err := CheckInputs(s.def, inputs); err != nil {
		return nil, fmt.Errorf("signature %s: %w", signature, err)
	}
	n := int(inputs[s.inputs[0]].Shape[0])
	if n == 0 {
		return nil, fmt.Errorf("signature %s: an empty batch", signature)
	}
	for _, name := range s.inputs[1:] {
		if m := int(inputs[name].Shape[0]); m != n {
			return nil, fmt.Errorf("signature %s: input %s has a batch of %d, %s of %d", signature, name, m, s.inputs[0], n)
		}
	}
	out := map[string]*Tensor{}
	largest := s.sizes[len(s.sizes)-1]
	for start := 0; start < n; start += largest {
		count := min(largest, n-start)
		size := s.sizes[0]
		for _, sz := range s.sizes {
			if sz >= count {
				size = sz
				break
			}
		}
		args := make([]*Tensor, len(s.inputs))
		for i, name := range s.inputs {
			args[i] = padRows(inputs[name], start, count, size)
		}
		res, err := s.execs[size].execute(args)
		if err != nil {
			return nil, fmt.Errorf("signature %s, batch of %d: %w", signature, size, err)
		}
		named, err := s.nameResults(res, size)
		if err != nil {
			return nil, fmt.Errorf("signature %s: %w", signature, err)
		}
		for name, t := range named {
			out[name] = appendRows(out[name], t, count)
		}
	}
	return out, nil
}

// nameResults names a module's results by the contract outputs of the same dtype and
// shape (distinctOutputs made them unique).
func (s *batchedSignature) nameResults(res []*Tensor, batch int) (map[string]*Tensor, error) {
	if len(res) != len(s.def.Outputs) {
		return nil, fmt.Errorf("the module returns %d results, the contract names %d outputs", len(res), len(s.def.Outputs))
	}
	named := map[string]*Tensor{}
	for _, t := range res {
		found := ""
		for name, spec := range s.def.Outputs {
			if spec.DType == t.DType() && shapeFits(spec.Shape, replaceBatch(t.Shape)) && len(t.Shape) > 0 && int(t.Shape[0]) == batch {
				found = name
				break
			}
		}
		if found == "" || named[found] != nil {
			return nil, fmt.Errorf("a module result of %s %v matches no output of the contract", t.DType(), t.Shape)
		}
		named[found] = t
	}
	return named, nil
}

// rowLen is the number of values in one batch row of t.
func rowLen(t *Tensor) int {
	n := 1
	for _, d := range t.Shape[1:] {
		n *= int(d)
	}
	return n
}

// padRows returns rows [start, start+count) of t, followed by zero rows up to size.
func padRows(t *Tensor, start, count, size int) *Tensor {
	row := rowLen(t)
	shape := append([]int64{int64(size)}, t.Shape[1:]...)
	if t.I32 != nil {
		v := make([]int32, size*row)
		copy(v, t.I32[start*row:(start+count)*row])
		return &Tensor{Shape: shape, I32: v}
	}
	v := make([]float32, size*row)
	copy(v, t.F32[start*row:(start+count)*row])
	return &Tensor{Shape: shape, F32: v}
}

// appendRows appends the first count rows of t to dst (nil: a new tensor).
func appendRows(dst, t *Tensor, count int) *Tensor {
	row := rowLen(t)
	if dst == nil {
		dst = &Tensor{Shape: append([]int64{0}, t.Shape[1:]...)}
	}
	dst.Shape[0] += int64(count)
	if t.I32 != nil {
		dst.I32 = append(dst.I32, t.I32[:count*row]...)
	} else {
		dst.F32 = append(dst.F32, t.F32[:count*row]...)
	}
	return dst
}
