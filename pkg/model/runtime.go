package model

import (
	"context"
	"fmt"
	"maps"
	"slices"

	corepb "github.com/wamuir/graft/tensorflow/core/protobuf/for_core_protos_go_proto"
	"google.golang.org/protobuf/proto"
)

// Tensor is a dense row-major tensor of float32 (F32) or int32 (I32) values.
type Tensor struct {
	Shape []int64
	F32   []float32
	I32   []int32
}

// DType is the contract dtype of t.
func (t *Tensor) DType() string {
	if t.I32 != nil {
		return Int32
	}
	return Float32
}

// Len is the number of elements t's shape holds.
func (t *Tensor) Len() int {
	n := 1
	for _, d := range t.Shape {
		n *= int(d)
	}
	return n
}

func (t *Tensor) check(name string, want TensorSpec) error {
	if t.DType() != want.DType {
		return fmt.Errorf("input %q is %s, the signature takes %s", name, t.DType(), want.DType)
	}
	if !shapeFits(want.Shape, replaceBatch(t.Shape)) {
		return fmt.Errorf("input %q has shape %v, the signature takes %s", name, t.Shape, want)
	}
	if n := max(len(t.F32), len(t.I32)); n != t.Len() {
		return fmt.Errorf("input %q has %d values for shape %v (%d)", name, n, t.Shape, t.Len())
	}
	return nil
}

// CheckInputs verifies that inputs has every input of def, each with its dtype, shape and the
// number of values the shape holds. Runtimes call it before they run a signature, so that a
// bad request fails with a message naming the input rather than inside the engine.
func CheckInputs(def SignatureDef, inputs map[string]*Tensor) error {
	for _, name := range slices.Sorted(maps.Keys(def.Inputs)) {
		t, ok := inputs[name]
		if !ok {
			return fmt.Errorf("input %q is missing", name)
		}
		if err := t.check(name, def.Inputs[name]); err != nil {
			return err
		}
	}
	return nil
}

// replaceBatch returns shape with its first dimension written as the contract writes a batch.
func replaceBatch(shape []int64) []int64 {
	s := append([]int64(nil), shape...)
	if len(s) > 0 {
		s[0] = -1
	}
	return s
}

// Runtime executes a SavedModel's signatures. Implementations are safe for concurrent use.
type Runtime interface {
	// Run executes one signature on a batch; inputs and outputs are keyed by the names of
	// the contract. A run that has started is not interrupted by ctx.
	Run(ctx context.Context, signature string, inputs map[string]*Tensor) (map[string]*Tensor, error)
	Close() error
}

// Runtime names for Options.Runtime.
const (
	// RuntimeTensorFlow runs the SavedModel through TensorFlow's C API.
	RuntimeTensorFlow = "tensorflow"
	// RuntimePJRT runs the StableHLO modules derived from the SavedModel
	// (model/export_stablehlo.py) through a PJRT plugin: NVIDIA's XLA CUDA plugin on GPUs.
	RuntimePJRT = "pjrt"
)

// Options configure how a model runs.
type Options struct {
	// Runtime is the execution engine: RuntimeTensorFlow (default) or RuntimePJRT.
	Runtime string
	// PJRTPlugin is the PJRT plugin library the pjrt runtime loads, e.g. the
	// xla_cuda_plugin.so of the jax-cuda13-pjrt wheel.
	PJRTPlugin string
	// IntraOpThreads and InterOpThreads bound TensorFlow's thread pools; 0 lets it choose
	// (one thread per core).
	IntraOpThreads int
	InterOpThreads int
	// GPUMemoryGrowth allocates GPU memory as needed instead of all of it at start-up, so
	// that several processes can share a GPU.
	GPUMemoryGrowth bool
	// VisibleGPUs restricts TensorFlow to these GPU indices ("0" or "0,1"); empty keeps all.
	VisibleGPUs string
	// CPUOnly hides every GPU from TensorFlow.
	CPUOnly bool
	// LogDevicePlacement logs the device every operation runs on (TensorFlow's own log).
	LogDevicePlacement bool
}

// sessionConfig is Options as the serialized tensorflow.ConfigProto the C API takes.
func (o Options) sessionConfig() ([]byte, error) {
	cfg := &corepb.ConfigProto{
		IntraOpParallelismThreads: int32(o.IntraOpThreads),
		InterOpParallelismThreads: int32(o.InterOpThreads),
		AllowSoftPlacement:        true,
		LogDevicePlacement:        o.LogDevicePlacement,
		GpuOptions: &corepb.GPUOptions{
			AllowGrowth:       o.GPUMemoryGrowth,
			VisibleDeviceList: o.VisibleGPUs,
		},
	}
	if o.CPUOnly {
		cfg.DeviceCount = map[string]int32{"GPU": 0}
	}
	b, err := proto.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode session config: %w", err)
	}
	return b, nil
}
