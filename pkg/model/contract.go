// Package model runs pacsflow's unified vision-language network: it reads and checks a model
// directory against the model contract (schemas/model-contract.md), tokenizes text, and runs
// the understand, ask and generate signatures on a Runtime.
package model

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pacsflow/pacsflow/pkg/imaging"
)

// ContractVersion is the contract version this package implements.
const ContractVersion = "1"

// ContractFile is where a model directory keeps its contract.
const ContractFile = "assets/model-contract.json"

// Signature names of contract version 1.
const (
	SigUnderstand = "understand"
	SigAsk        = "ask"
	SigGenerate   = "generate"
)

// Dtypes used by the contract.
const (
	Float32 = "float32"
	Int32   = "int32"
)

// Contract is a model's assets/model-contract.json.
type Contract struct {
	ContractVersion     string                  `json:"contract_version"`
	Model               ModelInfo               `json:"model"`
	Labels              []string                `json:"labels"`
	Preprocessing       Preprocessing           `json:"preprocessing"`
	Tokenizer           TokenizerSpec           `json:"tokenizer"`
	GenerateTasks       map[string]int32        `json:"generate_tasks,omitempty"`
	GenerateTasksDetail map[string]string       `json:"generate_tasks_detail,omitempty"`
	Signatures          map[string]SignatureDef `json:"signatures"`
}

// ModelInfo names the model; IntendedUse travels with every result made with it.
type ModelInfo struct {
	Name        string `json:"name"`
	Version     string `json:"version"`
	Description string `json:"description"`
	IntendedUse string `json:"intended_use"`
}

// Preprocessing says what images the model accepts and how pixels become its inputs.
type Preprocessing struct {
	ImageSize          [2]int     `json:"image_size"`
	Channels           int        `json:"channels"`
	ValueRange         [2]float64 `json:"value_range"`
	Window             Window     `json:"window"`
	AcceptedModalities []string   `json:"accepted_modalities"`
}

// Input maps a decoded frame onto the model's input as the contract's preprocessing says
// (imaging.Preprocess).
func (p Preprocessing) Input(f *imaging.Frame) Image {
	return Image{Pixels: imaging.Preprocess(f, imaging.Target{Size: p.ImageSize, Channels: p.Channels, ValueRange: p.ValueRange, Window: imaging.Window(p.Window)})}
}

// Window is a VOI window (PS3.3 C.11.2.1.2) used when a dataset has none of its own.
type Window struct {
	Center float64 `json:"center"`
	Width  float64 `json:"width"`
}

// TokenizerSpec describes the word tokenizer and its vocabulary file under assets/.
type TokenizerSpec struct {
	Kind       string `json:"kind"`
	Vocabulary string `json:"vocabulary"`
	Lowercase  bool   `json:"lowercase"`
	PadID      int32  `json:"pad_id"`
	BosID      int32  `json:"bos_id"`
	EosID      int32  `json:"eos_id"`
	UnkID      int32  `json:"unk_id"`
}

// SignatureDef lists a signature's inputs and outputs by name.
type SignatureDef struct {
	Inputs  map[string]TensorSpec `json:"inputs"`
	Outputs map[string]TensorSpec `json:"outputs"`
}

// TensorSpec is a dtype and a shape; -1 is the batch (any size).
type TensorSpec struct {
	DType string  `json:"dtype"`
	Shape []int64 `json:"shape"`
}

func (s TensorSpec) String() string {
	dims := make([]string, len(s.Shape))
	for i, d := range s.Shape {
		if d < 0 {
			dims[i] = "?"
		} else {
			dims[i] = fmt.Sprint(d)
		}
	}
	return s.DType + "[" + strings.Join(dims, ",") + "]"
}

// ErrContract marks a model that does not fill the contract.
var ErrContract = errors.New("model contract")

func contractErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrContract, fmt.Sprintf(format, args...))
}

// ReadContract reads and checks dir's contract on its own, without loading the SavedModel.
func ReadContract(dir string) (*Contract, error) {
	path := filepath.Join(dir, ContractFile)
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, contractErr("%s is missing: %s is not a pacsflow model (see schemas/model-contract.md)", ContractFile, dir)
		}
		return nil, fmt.Errorf("read model contract: %w", err)
	}
	var c Contract
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, contractErr("%s: %v", path, err)
	}
	if err := c.Check(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

// Check verifies the contract's own fields and that every listed signature has exactly the
// inputs and outputs of contract version 1, with shapes that agree with its sizes.
func (c *Contract) Check() error {
	if c.ContractVersion != ContractVersion {
		return contractErr("contract_version is %q, this pacsflow reads %q", c.ContractVersion, ContractVersion)
	}
	if c.Model.Name == "" || c.Model.Version == "" {
		return contractErr("model.name and model.version are required")
	}
	if len(c.Labels) == 0 {
		return contractErr("labels is empty")
	}
	p := c.Preprocessing
	if p.ImageSize[0] <= 0 || p.ImageSize[1] <= 0 {
		return contractErr("preprocessing.image_size %v must be positive", p.ImageSize)
	}
	if p.Channels != 1 && p.Channels != 3 {
		return contractErr("preprocessing.channels is %d, want 1 or 3", p.Channels)
	}
	if p.ValueRange[1] <= p.ValueRange[0] {
		return contractErr("preprocessing.value_range %v is empty", p.ValueRange)
	}
	if p.Window.Width < 1 {
		return contractErr("preprocessing.window.width is %v, want at least 1", p.Window.Width)
	}
	if c.Tokenizer.Kind != "word" {
		return contractErr("tokenizer.kind is %q, want \"word\"", c.Tokenizer.Kind)
	}
	if c.Tokenizer.Vocabulary == "" {
		return contractErr("tokenizer.vocabulary is required")
	}
	if len(c.Signatures) == 0 {
		return contractErr("signatures is empty")
	}
	want := c.expectedSignatures()
	for _, name := range slices.Sorted(maps.Keys(c.Signatures)) {
		exp, ok := want[name]
		if !ok {
			return contractErr("signature %q is not part of contract version %s (understand, ask, generate)", name, ContractVersion)
		}
		if err := matchSignature(name, exp, c.Signatures[name]); err != nil {
			return err
		}
	}
	if _, ok := c.Signatures[SigGenerate]; ok {
		for _, task := range []string{"synthesize", "restore", "convert"} {
			if _, ok := c.GenerateTasks[task]; !ok {
				return contractErr("generate_tasks lacks %q", task)
			}
		}
	}
	return nil
}

// expectedSignatures is the table of schemas/model-contract.md with this model's sizes filled
// in; a zero in a shape is a length the model chooses (T, Q, A, L, Z).
func (c *Contract) expectedSignatures() map[string]SignatureDef {
	h, w, ch := int64(c.Preprocessing.ImageSize[0]), int64(c.Preprocessing.ImageSize[1]), int64(c.Preprocessing.Channels)
	k := int64(len(c.Labels))
	img := TensorSpec{Float32, []int64{-1, h, w, ch}}
	return map[string]SignatureDef{
		SigUnderstand: {
			Inputs: map[string]TensorSpec{"images": img},
			Outputs: map[string]TensorSpec{
				"probabilities": {Float32, []int64{-1, k}},
				"boxes":         {Float32, []int64{-1, k, 4}},
				"report_tokens": {Int32, []int64{-1, 0}},
			},
		},
		SigAsk: {
			Inputs:  map[string]TensorSpec{"images": img, "question_tokens": {Int32, []int64{-1, 0}}},
			Outputs: map[string]TensorSpec{"answer_tokens": {Int32, []int64{-1, 0}}},
		},
		SigGenerate: {
			Inputs: map[string]TensorSpec{
				"task":             {Int32, []int64{-1}},
				"condition_tokens": {Int32, []int64{-1, 0}},
				"source_images":    img,
				"noise":            {Float32, []int64{-1, 0}},
			},
			Outputs: map[string]TensorSpec{"images": img},
		},
	}
}

func matchSignature(name string, want, got SignatureDef) error {
	for _, side := range []struct {
		kind      string
		want, got map[string]TensorSpec
	}{{"input", want.Inputs, got.Inputs}, {"output", want.Outputs, got.Outputs}} {
		for _, t := range slices.Sorted(maps.Keys(side.want)) {
			g, ok := side.got[t]
			if !ok {
				return contractErr("signature %s lacks %s %q", name, side.kind, t)
			}
			w := side.want[t]
			if g.DType != w.DType {
				return contractErr("signature %s %s %q is %s, want %s", name, side.kind, t, g.DType, w.DType)
			}
			if !shapeFits(w.Shape, g.Shape) {
				return contractErr("signature %s %s %q has shape %s, want %s", name, side.kind, t, g, w)
			}
		}
		for _, t := range slices.Sorted(maps.Keys(side.got)) {
			if _, ok := side.want[t]; !ok {
				return contractErr("signature %s has an %s %q that contract version %s does not define", name, side.kind, t, ContractVersion)
			}
		}
	}
	return nil
}

// shapeFits reports whether got has want's rank, a batch dimension of -1 where want has one,
// want's sizes where they are fixed, and a positive size where want leaves it to the model.
func shapeFits(want, got []int64) bool {
	if len(want) != len(got) {
		return false
	}
	for i := range want {
		switch {
		case want[i] < 0 && got[i] != -1:
			return false
		case want[i] == 0 && got[i] <= 0:
			return false
		case want[i] > 0 && got[i] != want[i]:
			return false
		}
	}
	return true
}

// Key is a short name of the model and its version (12 hex digits of a SHA-256), fit for event
// IDs and bucket keys: results made with another model or version get other keys.
func (c *Contract) Key() string {
	sum := sha256.Sum256([]byte(c.Model.Name + "\x00" + c.Model.Version))
	return hex.EncodeToString(sum[:6])
}

// Has reports whether the model provides signature name.
func (c *Contract) Has(name string) bool {
	_, ok := c.Signatures[name]
	return ok
}

// length returns the model-chosen length (the last dimension) of a signature's tensor.
func (c *Contract) length(sig, kind, name string) int {
	def := c.Signatures[sig]
	m := def.Inputs
	if kind == "output" {
		m = def.Outputs
	}
	s := m[name].Shape
	return int(s[len(s)-1])
}
