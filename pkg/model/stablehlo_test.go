package model

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

// fakeModule stands in for a compiled module of one batch size: its results are computed from
// its inputs (each row's sum, and the row's first value as an integer), returned in an order
// of its own, and it records the batch sizes it ran.
type fakeModule struct {
	size int
	ran  *[]int
}

func (f fakeModule) execute(inputs []*Tensor) ([]*Tensor, error) {
	if len(inputs) != 2 {
		return nil, errors.New("want 2 inputs")
	}
	x, scale := inputs[0], inputs[1]
	if int(x.Shape[0]) != f.size || int(scale.Shape[0]) != f.size {
		return nil, errors.New("a batch not of the compiled size")
	}
	*f.ran = append(*f.ran, f.size)
	sums := &Tensor{Shape: []int64{int64(f.size)}, F32: make([]float32, f.size)}
	firsts := &Tensor{Shape: []int64{int64(f.size), 1}, I32: make([]int32, f.size)}
	for i := range f.size {
		for _, v := range x.F32[i*3 : i*3+3] {
			sums.F32[i] += v * float32(scale.I32[i])
		}
		firsts.I32[i] = int32(x.F32[i*3])
	}
	return []*Tensor{firsts, sums}, nil
}

func fakeRuntime(ran *[]int, sizes ...int) *batchedRuntime {
	s := &batchedSignature{
		def: SignatureDef{
			Inputs: map[string]TensorSpec{"x": {DType: Float32, Shape: []int64{-1, 3}}, "scale": {DType: Int32, Shape: []int64{-1}}},
			Outputs: map[string]TensorSpec{"sum": {DType: Float32, Shape: []int64{-1}},
				"first": {DType: Int32, Shape: []int64{-1, 1}}},
		},
		inputs: []string{"x", "scale"},
		execs:  map[int]executor{},
		sizes:  sizes,
	}
	for _, n := range sizes {
		s.execs[n] = fakeModule{size: n, ran: ran}
	}
	return &batchedRuntime{sigs: map[string]*batchedSignature{"sig": s}, close: func() error { return nil }}
}

func TestBatchedRuntime(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sizes []int
		n     int
		ran   []int
	}{
		{"exact size", []int{1, 4}, 4, []int{4}},
		{"padded to the next size", []int{1, 4}, 3, []int{4}},
		{"the smallest size", []int{2, 8}, 1, []int{2}},
		{"cut into the largest, the rest padded", []int{1, 4}, 10, []int{4, 4, 4}},
		{"cut, the rest exact", []int{1, 4}, 9, []int{4, 4, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ran []int
			r := fakeRuntime(&ran, tc.sizes...)
			x := &Tensor{Shape: []int64{int64(tc.n), 3}, F32: make([]float32, tc.n*3)}
			scale := &Tensor{Shape: []int64{int64(tc.n)}, I32: make([]int32, tc.n)}
			for i := range tc.n {
				x.F32[i*3], x.F32[i*3+1], x.F32[i*3+2] = float32(i+1), 1, 2
				scale.I32[i] = 2
			}
			out, err := r.Run(context.Background(), "sig", map[string]*Tensor{"x": x, "scale": scale})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ran, tc.ran) {
				t.Errorf("ran batches of %v, want %v", ran, tc.ran)
			}
			sum, first := out["sum"], out["first"]
			if sum == nil || first == nil || !slices.Equal(sum.Shape, []int64{int64(tc.n)}) || !slices.Equal(first.Shape, []int64{int64(tc.n), 1}) {
				t.Fatalf("outputs %+v", out)
			}
			for i := range tc.n {
				if want := float32(2 * (i + 1 + 3)); sum.F32[i] != want || first.I32[i] != int32(i+1) {
					t.Errorf("row %d: sum %v first %v, want %v and %d", i, sum.F32[i], first.I32[i], want, i+1)
				}
			}
		})
	}
}

func TestBatchedRuntimeRefuses(t *testing.T) {
	var ran []int
	r := fakeRuntime(&ran, 2)
	x := &Tensor{Shape: []int64{2, 3}, F32: make([]float32, 6)}
	for _, tc := range []struct {
		name   string
		sig    string
		inputs map[string]*Tensor
		want   string
	}{
		{"unknown signature", "other", nil, `no signature "other"`},
		{"missing input", "sig", map[string]*Tensor{"x": x}, `input "scale" is missing`},
		{"batches differ", "sig", map[string]*Tensor{"x": x, "scale": {Shape: []int64{3}, I32: make([]int32, 3)}}, "batch of 3"},
		{"empty batch", "sig", map[string]*Tensor{"x": {Shape: []int64{0, 3}, F32: []float32{}}, "scale": {Shape: []int64{0}, I32: []int32{}}}, "empty batch"},
	} {
		_, err := r.Run(context.Background(), tc.sig, tc.inputs)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	if len(ran) != 0 {
		t.Errorf("refused runs executed batches %v", ran)
	}
}

// TestNameResults: a result the contract has no output for is an error, not a misnamed output.
func TestNameResults(t *testing.T) {
	var ran []int
	s := fakeRuntime(&ran, 2).sigs["sig"]
	ok := []*Tensor{{Shape: []int64{2, 1}, I32: make([]int32, 2)}, {Shape: []int64{2}, F32: make([]float32, 2)}}
	if named, err := s.nameResults(ok, 2); err != nil || named["first"] != ok[0] || named["sum"] != ok[1] {
		t.Errorf("nameResults = %v, %v", named, err)
	}
	for name, res := range map[string][]*Tensor{
		"too few":    ok[:1],
		"wrong type": {{Shape: []int64{2, 1}, F32: make([]float32, 2)}, ok[1]},
		"twice":      {ok[1], ok[1]},
		"wrong rows": {{Shape: []int64{3, 1}, I32: make([]int32, 3)}, ok[1]},
	} {
		if _, err := s.nameResults(res, 2); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestDistinctOutputs(t *testing.T) {
	def := SignatureDef{Outputs: map[string]TensorSpec{
		"a": {DType: Float32, Shape: []int64{-1, 3}},
		"b": {DType: Float32, Shape: []int64{-1, 3}},
	}}
	if err := distinctOutputs("sig", def); err == nil || !strings.Contains(err.Error(), "a and b") {
		t.Errorf("two outputs of one dtype and shape: %v", err)
	}
	def.Outputs["b"] = TensorSpec{DType: Int32, Shape: []int64{-1, 3}}
	if err := distinctOutputs("sig", def); err != nil {
		t.Error(err)
	}
}
