package synth

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	phantoms "github.com/pacsflow/pacsflow/model"
)

// PhantomSize is the number of rows and columns of a phantom as the generator renders it.
const PhantomSize = 64

// PhantomSpec asks for one phantom.
type PhantomSpec struct {
	// Seed fixes the phantom: its anatomy, where its findings are, and its variants.
	Seed uint64 `json:"seed"`
	// Flags say which findings the phantom has, in the order of Labels.
	Flags [len(Labels)]bool `json:"flags"`
	// Variants is the number of renderings wanted, at least 1: the phantom itself, then
	// Variants−1 slightly blurred copies of it, each blurred differently.
	Variants int `json:"variants"`
}

// Phantom is a rendered phantom and its ground truth.
type Phantom struct {
	// Findings are the findings the phantom has, by label.
	Findings map[string]Location
	// Report is the generator's templated report of the findings.
	Report string
	// Images are the renderings PhantomSpec.Variants asked for, the unblurred one first: each
	// PhantomSize×PhantomSize values in rows, 0 to 4095, higher brighter (MONOCHROME2).
	Images [][]uint16
}

// Location is where a finding is.
type Location struct {
	// Box bounds the finding: y0, x0, y1, x1 as fractions of the image's rows and columns
	// (0 is the top or left edge, 1 the bottom or right edge).
	Box [4]float64 `json:"box"`
	// Side is the patient's side, "right" or "left"; the patient's right is on the image's
	// left.
	Side string `json:"side"`
	// Zone is the lung zone: "upper", "middle" or "lower".
	Zone string `json:"zone"`
}

// A PhantomSource renders phantoms.
type PhantomSource interface {
	// Render returns one phantom per spec, in the same order. The same spec gives the same
	// phantom every time.
	Render(ctx context.Context, specs []PhantomSpec) ([]Phantom, error)
}

// Python is the PhantomSource of pacsflow: the generator model/phantoms.py, embedded in the
// binary, run once per Render call by a Python interpreter that has numpy.
type Python struct {
	// Interpreter is the Python to run: a path, or a name looked up in PATH.
	Interpreter string
}

// ErrNoPython reports a Python interpreter that cannot be found, ErrNoNumpy one without numpy.
var (
	ErrNoPython = errors.New("no such Python interpreter")
	ErrNoNumpy  = errors.New("numpy is missing")
)

// Render writes the generator and the specs to a temporary folder, runs the generator's
// --spec mode (see model/phantoms.py) and reads back what it wrote.
func (p Python) Render(ctx context.Context, specs []PhantomSpec) ([]Phantom, error) {
	tmp, err := os.MkdirTemp("", "pacsflow-synth-")
	if err != nil {
		return nil, fmt.Errorf("temporary folder for the phantom generator: %w", err)
	}
	defer os.RemoveAll(tmp)
	script, specPath, out := filepath.Join(tmp, "phantoms.py"), filepath.Join(tmp, "spec.json"), filepath.Join(tmp, "out")
	if err := os.WriteFile(script, []byte(phantoms.Source), 0o644); err != nil {
		return nil, fmt.Errorf("write the phantom generator: %w", err)
	}
	spec, err := json.Marshal(struct {
		Phantoms []PhantomSpec `json:"phantoms"`
	}{specs})
	if err != nil {
		return nil, fmt.Errorf("encode the phantom specs: %w", err)
	}
	if err := os.WriteFile(specPath, spec, 0o644); err != nil {
		return nil, fmt.Errorf("write the phantom specs: %w", err)
	}
	cmd := exec.CommandContext(ctx, p.Interpreter, script, "--out", out, "--spec", specPath)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		switch {
		case ctx.Err() != nil:
			return nil, fmt.Errorf("phantom generator: %w", ctx.Err())
		case errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("%w: %s (%v): run ./scripts/build.sh, which creates .venv with numpy, or use another Python 3 that has numpy", ErrNoPython, p.Interpreter, err)
		case strings.Contains(msg, "No module named 'numpy'"):
			return nil, fmt.Errorf("%w in %s: run ./scripts/build.sh, which creates .venv with numpy, or use another Python 3 that has numpy", ErrNoNumpy, p.Interpreter)
		}
		return nil, fmt.Errorf("phantom generator (%s phantoms.py --spec): %w\n%s", p.Interpreter, err, msg)
	}
	return readPhantoms(out, specs)
}

// readPhantoms reads what the generator's --spec mode wrote to dir.
func readPhantoms(dir string, specs []PhantomSpec) ([]Phantom, error) {
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, fmt.Errorf("phantom generator output: %w", err)
	}
	var index struct {
		Phantoms []struct {
			File     string              `json:"file"`
			Variants []string            `json:"variants"`
			Labels   map[string]bool     `json:"labels"`
			Findings map[string]Location `json:"findings"`
			Report   string              `json:"report"`
		} `json:"phantoms"`
	}
	if err := json.Unmarshal(b, &index); err != nil {
		return nil, fmt.Errorf("phantom generator output index.json: %w", err)
	}
	if len(index.Phantoms) != len(specs) {
		return nil, fmt.Errorf("phantom generator rendered %d phantoms, want %d", len(index.Phantoms), len(specs))
	}
	out := make([]Phantom, len(specs))
	for i, e := range index.Phantoms {
		for k, label := range Labels {
			if e.Labels[label] != specs[i].Flags[k] {
				return nil, fmt.Errorf("phantom generator rendered phantom %d with %s %v, want %v", i, label, e.Labels[label], specs[i].Flags[k])
			}
		}
		if want := max(specs[i].Variants, 1); len(e.Variants)+1 != want {
			return nil, fmt.Errorf("phantom generator rendered %d variants of phantom %d, want %d", len(e.Variants)+1, i, want)
		}
		out[i] = Phantom{Findings: e.Findings, Report: e.Report}
		for _, name := range append([]string{e.File}, e.Variants...) {
			img, err := readRaw(filepath.Join(dir, filepath.Base(name)))
			if err != nil {
				return nil, err
			}
			out[i].Images = append(out[i].Images, img)
		}
	}
	return out, nil
}

// readRaw reads one rendering: PhantomSize² little-endian uint16 values of 12 bits.
func readRaw(path string) ([]uint16, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("phantom generator output: %w", err)
	}
	if len(b) != 2*PhantomSize*PhantomSize {
		return nil, fmt.Errorf("phantom generator output %s: %d bytes, want %d", filepath.Base(path), len(b), 2*PhantomSize*PhantomSize)
	}
	img := make([]uint16, PhantomSize*PhantomSize)
	for i := range img {
		img[i] = binary.LittleEndian.Uint16(b[2*i:])
		if img[i] > maxStored {
			return nil, fmt.Errorf("phantom generator output %s: value %d exceeds %d", filepath.Base(path), img[i], maxStored)
		}
	}
	return img, nil
}
