//go:build tensorflow

package model

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	tf "github.com/wamuir/graft/tensorflow"
)

// TensorFlowAvailable reports whether this binary links TensorFlow's C library.
const TensorFlowAvailable = true

// tfRuntime runs signatures through TensorFlow's C API. A TensorFlow session is safe for
// concurrent Run calls, so tfRuntime needs no lock of its own.
type tfRuntime struct {
	sm   *tf.SavedModel
	sigs map[string]tfSignature
}

type tfSignature struct {
	def         SignatureDef
	inputs      map[string]tf.Output
	outputNames []string
	outputs     []tf.Output
}

func openTensorFlow(dir string, saved map[string]SavedSignature, c *Contract, opts Options) (Runtime, error) {
	cfg, err := opts.sessionConfig()
	if err != nil {
		return nil, err
	}
	sm, err := tf.LoadSavedModel(dir, []string{ServeTag}, &tf.SessionOptions{Config: cfg})
	if err != nil {
		return nil, fmt.Errorf("load SavedModel %s with TensorFlow %s: %w", dir, tf.Version(), err)
	}
	r := &tfRuntime{sm: sm, sigs: map[string]tfSignature{}}
	for name, def := range c.Signatures {
		s := tfSignature{def: def, inputs: map[string]tf.Output{}}
		for in := range def.Inputs {
			out, err := graphOutput(sm.Graph, saved[name].TensorNames[in])
			if err != nil {
				sm.Session.Close()
				return nil, fmt.Errorf("signature %s input %s: %w", name, in, err)
			}
			s.inputs[in] = out
		}
		for on := range def.Outputs {
			out, err := graphOutput(sm.Graph, saved[name].TensorNames[on])
			if err != nil {
				sm.Session.Close()
				return nil, fmt.Errorf("signature %s output %s: %w", name, on, err)
			}
			s.outputNames = append(s.outputNames, on)
			s.outputs = append(s.outputs, out)
		}
		r.sigs[name] = s
	}
	return r, nil
}

// graphOutput resolves a signature's tensor name ("op:index") in the loaded graph.
func graphOutput(g *tf.Graph, tensor string) (tf.Output, error) {
	op, idx, ok := strings.Cut(tensor, ":")
	i, err := strconv.Atoi(idx)
	if !ok || err != nil {
		return tf.Output{}, fmt.Errorf("%w: tensor name %q is not op:index", ErrContract, tensor)
	}
	o := g.Operation(op)
	if o == nil || i >= o.NumOutputs() {
		return tf.Output{}, fmt.Errorf("%w: the graph has no tensor %q", ErrContract, tensor)
	}
	return o.Output(i), nil
}

func (r *tfRuntime) Run(ctx context.Context, signature string, inputs map[string]*Tensor) (map[string]*Tensor, error) {
	s, ok := r.sigs[signature]
	if !ok {
		return nil, fmt.Errorf("run %s: the model has no such signature", signature)
	}
	if err := CheckInputs(s.def, inputs); err != nil {
		return nil, fmt.Errorf("run %s: %w", signature, err)
	}
	feeds := make(map[tf.Output]*tf.Tensor, len(s.inputs))
	for name := range s.def.Inputs {
		tt, err := toTF(inputs[name])
		if err != nil {
			return nil, fmt.Errorf("run %s: input %q: %w", signature, name, err)
		}
		feeds[s.inputs[name]] = tt
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("run %s: %w", signature, err)
	}
	res, err := r.sm.Session.Run(feeds, s.outputs, nil)
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", signature, err)
	}
	out := make(map[string]*Tensor, len(res))
	for i, t := range res {
		gt, err := fromTF(t)
		if err != nil {
			return nil, fmt.Errorf("run %s: output %q: %w", signature, s.outputNames[i], err)
		}
		out[s.outputNames[i]] = gt
	}
	return out, nil
}

func toTF(t *Tensor) (*tf.Tensor, error) {
	var (
		tt  *tf.Tensor
		err error
	)
	if t.I32 != nil {
		tt, err = tf.NewTensor(t.I32)
	} else {
		tt, err = tf.NewTensor(t.F32)
	}
	if err != nil {
		return nil, err
	}
	return tt, tt.Reshape(append([]int64(nil), t.Shape...))
}

// fromTF copies a result out of TensorFlow's memory; flattening first makes Value return one
// slice instead of nested ones.
func fromTF(t *tf.Tensor) (*Tensor, error) {
	shape := append([]int64(nil), t.Shape()...)
	out := &Tensor{Shape: shape}
	if err := t.Reshape([]int64{int64(out.Len())}); err != nil {
		return nil, err
	}
	switch v := t.Value().(type) {
	case []float32:
		out.F32 = v
	case []int32:
		out.I32 = v
	default:
		return nil, fmt.Errorf("dtype %v is not float32 or int32", t.DataType())
	}
	return out, nil
}

func (r *tfRuntime) Close() error {
	if err := r.sm.Session.Close(); err != nil {
		return fmt.Errorf("close TensorFlow session: %w", err)
	}
	return nil
}
