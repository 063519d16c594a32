package model

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	typespb "github.com/wamuir/graft/tensorflow/core/framework/types_go_proto"
	corepb "github.com/wamuir/graft/tensorflow/core/protobuf/for_core_protos_go_proto"
	"google.golang.org/protobuf/proto"
)

// ServeTag is the SavedModel tag pacsflow loads.
const ServeTag = "serve"

// SavedSignature is a signature as the SavedModel records it: its tensors' specs and the
// graph tensor each input and output is bound to.
type SavedSignature struct {
	SignatureDef
	TensorNames map[string]string // input or output name → graph tensor ("op:0")
}

// ReadSavedSignatures reads the signatures of dir's SavedModel (tag serve) from saved_model.pb
// without loading TensorFlow, so contracts can be checked on machines without it. It also
// checks that the variables the model has are there to restore.
func ReadSavedSignatures(dir string) (map[string]SavedSignature, error) {
	path := filepath.Join(dir, "saved_model.pb")
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s has no saved_model.pb: not a SavedModel", ErrContract, dir)
		}
		return nil, fmt.Errorf("read SavedModel: %w", err)
	}
	var sm corepb.SavedModel
	if err := proto.Unmarshal(b, &sm); err != nil {
		return nil, fmt.Errorf("%w: %s is corrupt: %v", ErrContract, path, err)
	}
	for _, mg := range sm.GetMetaGraphs() {
		if !slices.Contains(mg.GetMetaInfoDef().GetTags(), ServeTag) {
			continue
		}
		if err := checkVariables(dir, mg); err != nil {
			return nil, err
		}
		out := make(map[string]SavedSignature)
		for name, sd := range mg.GetSignatureDef() {
			if strings.HasPrefix(name, "__") {
				continue // __saved_model_init_op and other internal entries are not signatures
			}
			sig := SavedSignature{
				SignatureDef: SignatureDef{Inputs: map[string]TensorSpec{}, Outputs: map[string]TensorSpec{}},
				TensorNames:  map[string]string{},
			}
			for _, side := range []struct {
				infos map[string]*corepb.TensorInfo
				specs map[string]TensorSpec
			}{{sd.GetInputs(), sig.Inputs}, {sd.GetOutputs(), sig.Outputs}} {
				for key, ti := range side.infos {
					side.specs[key] = tensorSpecOf(ti)
					sig.TensorNames[key] = ti.GetName()
				}
			}
			out[name] = sig
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: %s has no meta graph tagged %q", ErrContract, path, ServeTag)
}

// checkVariables fails when the model has variables but variables/variables.index is gone:
// TensorFlow would then load the graph without restoring anything and fail only at the first
// run, or worse, run on uninitialized weights.
func checkVariables(dir string, mg *corepb.MetaGraphDef) error {
	n := 0
	for _, node := range mg.GetObjectGraphDef().GetNodes() {
		if node.GetVariable() != nil {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	if _, err := os.Stat(filepath.Join(dir, "variables", "variables.index")); err != nil {
		return fmt.Errorf("%w: %s has %d variables but no variables/variables.index to restore them from", ErrContract, dir, n)
	}
	return nil
}

func tensorSpecOf(ti *corepb.TensorInfo) TensorSpec {
	var dt string
	switch ti.GetDtype() {
	case typespb.DataType_DT_FLOAT:
		dt = Float32
	case typespb.DataType_DT_INT32:
		dt = Int32
	default:
		dt = strings.ToLower(strings.TrimPrefix(ti.GetDtype().String(), "DT_"))
	}
	var shape []int64
	if ts := ti.GetTensorShape(); ts != nil && !ts.GetUnknownRank() {
		shape = make([]int64, len(ts.GetDim()))
		for i, d := range ts.GetDim() {
			shape[i] = d.GetSize()
		}
	}
	return TensorSpec{DType: dt, Shape: shape}
}

// CheckSavedSignatures verifies that the SavedModel has every signature the contract lists,
// with the same inputs and outputs, dtypes and shapes.
func (c *Contract) CheckSavedSignatures(saved map[string]SavedSignature) error {
	for _, name := range slices.Sorted(maps.Keys(c.Signatures)) {
		s, ok := saved[name]
		if !ok {
			return contractErr("the SavedModel has no signature %q (it has %s)", name, strings.Join(slices.Sorted(maps.Keys(saved)), ", "))
		}
		if err := matchSignature(name+" (in the SavedModel)", c.Signatures[name], s.SignatureDef); err != nil {
			return err
		}
	}
	return nil
}
