package model

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"slices"
)

// Model is a loaded model that fills the contract. It is safe for concurrent use.
type Model struct {
	contract  *Contract
	tokenizer *Tokenizer
	rt        Runtime
}

// Inspect reads and checks dir's contract, vocabulary and SavedModel signatures without
// loading a runtime. It returns whatever it could read even when the check fails, so that
// `pacsflow model inspect` can show it.
func Inspect(dir string) (*Contract, map[string]SavedSignature, error) {
	c, saved, _, err := inspect(dir)
	return c, saved, err
}

func inspect(dir string) (*Contract, map[string]SavedSignature, *Tokenizer, error) {
	saved, err := ReadSavedSignatures(dir)
	if err != nil {
		return nil, nil, nil, err
	}
	c, err := ReadContract(dir)
	if err != nil {
		return nil, saved, nil, err
	}
	if err := c.CheckSavedSignatures(saved); err != nil {
		return c, saved, nil, err
	}
	vocab, err := readVocabulary(filepath.Join(dir, "assets", c.Tokenizer.Vocabulary))
	if err != nil {
		return c, saved, nil, fmt.Errorf("%w: %v", ErrContract, err)
	}
	tok, err := NewTokenizer(c.Tokenizer, vocab)
	return c, saved, tok, err
}

// Open checks dir against the contract, loads it on the runtime opts names, and runs each
// signature once on a blank image: the first run builds TensorFlow's kernels (hundreds of
// milliseconds), and a model whose variables were not restored fails here, at load time,
// rather than on the first study.
func Open(ctx context.Context, dir string, opts Options) (*Model, error) {
	c, saved, tok, err := inspect(dir)
	if err != nil {
		return nil, fmt.Errorf("open model %s: %w", dir, err)
	}
	var rt Runtime
	switch opts.Runtime {
	case "", RuntimeTensorFlow:
		rt, err = openTensorFlow(dir, saved, c, opts)
	case RuntimePJRT:
		rt, err = openPJRT(dir, c, opts)
	default:
		err = fmt.Errorf("unknown model runtime %q (have: %s, %s)", opts.Runtime, RuntimeTensorFlow, RuntimePJRT)
	}
	if err != nil {
		return nil, fmt.Errorf("open model %s: %w", dir, err)
	}
	m := &Model{contract: c, tokenizer: tok, rt: rt}
	if err := m.warmUp(ctx); err != nil {
		rt.Close()
		return nil, fmt.Errorf("open model %s: %w", dir, err)
	}
	return m, nil
}

func (m *Model) warmUp(ctx context.Context) error {
	for _, sig := range slices.Sorted(maps.Keys(m.contract.Signatures)) {
		if _, err := m.Probe(ctx, sig); err != nil {
			return fmt.Errorf("warm-up run of %s: %w", sig, err)
		}
	}
	return nil
}

// Probe runs signature sig once on a blank image (and, for ask, an empty question; for
// generate, an empty synthesis prompt) and describes the result in a few words.
func (m *Model) Probe(ctx context.Context, sig string) (string, error) {
	p := m.contract.Preprocessing
	blank := []Image{{Pixels: make([]float32, p.ImageSize[0]*p.ImageSize[1]*p.Channels)}}
	switch sig {
	case SigUnderstand:
		u, err := m.Understand(ctx, blank)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("report %q", u[0].Report), nil
	case SigAsk:
		a, err := m.Ask(ctx, blank, []string{""})
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("answer %q", a[0]), nil
	case SigGenerate:
		g, err := m.Generate(ctx, []GenerateRequest{{Task: "synthesize"}})
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d pixels", len(g[0].Pixels)), nil
	}
	return "", fmt.Errorf("%s: %w", sig, errNoSignature)
}

// Contract is the model's contract.
func (m *Model) Contract() *Contract { return m.contract }

// Tokenizer is the model's tokenizer.
func (m *Model) Tokenizer() *Tokenizer { return m.tokenizer }

// Runtime is the runtime the model runs on.
func (m *Model) Runtime() Runtime { return m.rt }

// Close releases the runtime.
func (m *Model) Close() error { return m.rt.Close() }

// Image is one preprocessed image: H×W×C float32 values, row-major, in the contract's value
// range (see Preprocess).
type Image struct {
	Pixels []float32
}

// Finding is one label's result.
type Finding struct {
	Label       string
	Probability float32
	// Box is (y0, x0, y1, x1), normalized to the preprocessed image.
	Box [4]float32
}

// Understanding is the understand signature's result for one image.
type Understanding struct {
	// Findings has one entry per label, in the contract's label order.
	Findings     []Finding
	ReportTokens []int32
	Report       string
}

var errNoSignature = errors.New("the model does not provide this signature")

func (m *Model) require(sig string) error {
	if !m.contract.Has(sig) {
		return fmt.Errorf("%s: %w (it has %v)", sig, errNoSignature, slices.Sorted(maps.Keys(m.contract.Signatures)))
	}
	return nil
}

// imageBatch packs images into one [B,H,W,C] tensor.
func (m *Model) imageBatch(images []Image) (*Tensor, error) {
	p := m.contract.Preprocessing
	n := p.ImageSize[0] * p.ImageSize[1] * p.Channels
	data := make([]float32, 0, n*len(images))
	for i, im := range images {
		if len(im.Pixels) != n {
			return nil, fmt.Errorf("image %d has %d values, the model takes %d×%d×%d = %d", i, len(im.Pixels), p.ImageSize[0], p.ImageSize[1], p.Channels, n)
		}
		data = append(data, im.Pixels...)
	}
	return &Tensor{Shape: []int64{int64(len(images)), int64(p.ImageSize[0]), int64(p.ImageSize[1]), int64(p.Channels)}, F32: data}, nil
}

// textBatch encodes texts into one [B,length] tensor.
func (m *Model) textBatch(texts []string, length int) *Tensor {
	data := make([]int32, 0, length*len(texts))
	for _, t := range texts {
		data = append(data, m.tokenizer.Encode(t, length)...)
	}
	return &Tensor{Shape: []int64{int64(len(texts)), int64(length)}, I32: data}
}

// rows splits a [B,N] int32 tensor into B rows of N.
func rows(t *Tensor) [][]int32 {
	b := int(t.Shape[0])
	n := len(t.I32) / max(b, 1)
	out := make([][]int32, b)
	for i := range out {
		out[i] = t.I32[i*n : (i+1)*n]
	}
	return out
}

// Understand runs the understand signature: findings, boxes and a draft report per image.
func (m *Model) Understand(ctx context.Context, images []Image) ([]Understanding, error) {
	if err := m.require(SigUnderstand); err != nil || len(images) == 0 {
		return nil, err
	}
	in, err := m.imageBatch(images)
	if err != nil {
		return nil, fmt.Errorf("understand: %w", err)
	}
	out, err := m.rt.Run(ctx, SigUnderstand, map[string]*Tensor{"images": in})
	if err != nil {
		return nil, err
	}
	probs, boxes, tokens := out["probabilities"], out["boxes"], rows(out["report_tokens"])
	k := len(m.contract.Labels)
	res := make([]Understanding, len(images))
	for b := range res {
		u := Understanding{Findings: make([]Finding, k), ReportTokens: tokens[b], Report: m.tokenizer.Decode(tokens[b])}
		for j, label := range m.contract.Labels {
			f := Finding{Label: label, Probability: probs.F32[b*k+j]}
			copy(f.Box[:], boxes.F32[(b*k+j)*4:])
			u.Findings[j] = f
		}
		res[b] = u
	}
	return res, nil
}

// Ask runs the ask signature: the answer to questions[i] about images[i].
func (m *Model) Ask(ctx context.Context, images []Image, questions []string) ([]string, error) {
	if err := m.require(SigAsk); err != nil || len(images) == 0 {
		return nil, err
	}
	if len(questions) != len(images) {
		return nil, fmt.Errorf("ask: %d images but %d questions", len(images), len(questions))
	}
	in, err := m.imageBatch(images)
	if err != nil {
		return nil, fmt.Errorf("ask: %w", err)
	}
	q := m.textBatch(questions, m.contract.length(SigAsk, "input", "question_tokens"))
	out, err := m.rt.Run(ctx, SigAsk, map[string]*Tensor{"images": in, "question_tokens": q})
	if err != nil {
		return nil, err
	}
	answers := make([]string, len(images))
	for i, r := range rows(out["answer_tokens"]) {
		answers[i] = m.tokenizer.Decode(r)
	}
	return answers, nil
}

// GenerateRequest asks for one generated image.
type GenerateRequest struct {
	// Task is one of the contract's generate_tasks: synthesize, restore or convert.
	Task string
	// Condition is the prompt: for synthesize, the findings wanted ("nodule", "normal").
	Condition string
	// Source is the image to restore or convert; nil for synthesize.
	Source *Image
	// Seed determines the noise input, so one seed gives one image.
	Seed uint64
}

// Noise is the standard-normal latent pacsflow feeds the generate signature for seed: a
// PCG stream, so the same seed gives the same image on every machine.
func Noise(seed uint64, n int) []float32 {
	r := rand.New(rand.NewPCG(seed, 0x7061637366_6c6f77)) // "pacsflow"
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(r.NormFloat64())
	}
	return out
}

// Generate runs the generate signature, one image per request.
func (m *Model) Generate(ctx context.Context, reqs []GenerateRequest) ([]Image, error) {
	if err := m.require(SigGenerate); err != nil || len(reqs) == 0 {
		return nil, err
	}
	p := m.contract.Preprocessing
	pixels := p.ImageSize[0] * p.ImageSize[1] * p.Channels
	z := m.contract.length(SigGenerate, "input", "noise")
	tasks := make([]int32, len(reqs))
	conds := make([]string, len(reqs))
	sources := make([]Image, len(reqs))
	noise := make([]float32, 0, z*len(reqs))
	for i, r := range reqs {
		id, ok := m.contract.GenerateTasks[r.Task]
		if !ok {
			return nil, fmt.Errorf("generate: request %d: unknown task %q (have %v)", i, r.Task, slices.Sorted(maps.Keys(m.contract.GenerateTasks)))
		}
		tasks[i] = id
		conds[i] = r.Condition
		sources[i] = Image{Pixels: make([]float32, pixels)}
		if r.Source != nil {
			sources[i] = *r.Source
		} else if r.Task != "synthesize" {
			return nil, fmt.Errorf("generate: request %d: task %s needs a source image", i, r.Task)
		}
		noise = append(noise, Noise(r.Seed, z)...)
	}
	src, err := m.imageBatch(sources)
	if err != nil {
		return nil, fmt.Errorf("generate: %w", err)
	}
	out, err := m.rt.Run(ctx, SigGenerate, map[string]*Tensor{
		"task":             {Shape: []int64{int64(len(reqs))}, I32: tasks},
		"condition_tokens": m.textBatch(conds, m.contract.length(SigGenerate, "input", "condition_tokens")),
		"source_images":    src,
		"noise":            {Shape: []int64{int64(len(reqs)), int64(z)}, F32: noise},
	})
	if err != nil {
		return nil, err
	}
	imgs := make([]Image, len(reqs))
	for i := range imgs {
		imgs[i] = Image{Pixels: out["images"].F32[i*pixels : (i+1)*pixels]}
	}
	return imgs, nil
}
