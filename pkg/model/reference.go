package model

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
)

// ReferenceRun is one signature's inputs and the outputs Python TensorFlow computed for them,
// as model/reference_outputs.py records them: what a runtime is checked against.
type ReferenceRun struct {
	Inputs, Outputs map[string]*Tensor
}

// referenceTensor is a tensor in model/reference_outputs.py's JSON: data flat, row-major,
// floats as their exact float32 values.
type referenceTensor struct {
	DType string    `json:"dtype"`
	Shape []int64   `json:"shape"`
	Data  []float64 `json:"data"`
}

func (j referenceTensor) tensor() *Tensor {
	t := &Tensor{Shape: j.Shape}
	if j.DType == Int32 {
		t.I32 = make([]int32, len(j.Data))
		for i, v := range j.Data {
			t.I32[i] = int32(v)
		}
		return t
	}
	t.F32 = make([]float32, len(j.Data))
	for i, v := range j.Data {
		t.F32[i] = float32(v)
	}
	return t
}

// ReadReferenceRuns reads the JSON model/reference_outputs.py writes: signature -> run.
func ReadReferenceRuns(path string) (map[string]ReferenceRun, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var raw map[string]struct {
		Inputs  map[string]referenceTensor `json:"inputs"`
		Outputs map[string]referenceTensor `json:"outputs"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	runs := map[string]ReferenceRun{}
	for sig, r := range raw {
		run := ReferenceRun{Inputs: map[string]*Tensor{}, Outputs: map[string]*Tensor{}}
		for name, t := range r.Inputs {
			run.Inputs[name] = t.tensor()
		}
		for name, t := range r.Outputs {
			run.Outputs[name] = t.tensor()
		}
		runs[sig] = run
	}
	return runs, nil
}

// OutputDiff is how one output differs from its reference: the largest absolute difference
// of a float output, the index of the first differing value of an integer one (-1: none), or
// Err when the output is missing or of another dtype or shape.
type OutputDiff struct {
	Name      string
	Float     bool
	MaxAbs    float64
	FirstDiff int
	Err       error
}

// CompareOutputs compares got with want, output by output, in name order.
func CompareOutputs(got, want map[string]*Tensor) []OutputDiff {
	var diffs []OutputDiff
	for _, name := range slices.Sorted(maps.Keys(want)) {
		w, g := want[name], got[name]
		d := OutputDiff{Name: name, Float: w.I32 == nil, FirstDiff: -1}
		switch {
		case g == nil:
			d.Err = fmt.Errorf("output %s missing", name)
		case g.DType() != w.DType() || !slices.Equal(g.Shape, w.Shape):
			d.Err = fmt.Errorf("output %s is %s %v, want %s %v", name, g.DType(), g.Shape, w.DType(), w.Shape)
		case d.Float:
			for i := range w.F32 {
				d.MaxAbs = math.Max(d.MaxAbs, math.Abs(float64(g.F32[i]-w.F32[i])))
			}
		default:
			for i := range w.I32 {
				if g.I32[i] != w.I32[i] {
					d.FirstDiff = i
					break
				}
			}
		}
		diffs = append(diffs, d)
	}
	return diffs
}
