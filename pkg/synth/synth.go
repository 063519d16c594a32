// Package synth writes synthetic DICOM studies with known ground truth: chest radiographs
// rendered by the phantom generator the reference model was trained on (model/phantoms.py),
// as a modality would send them, so that the pipeline can be fed realistic input whose findings
// are known.
//
// # Studies
//
// Each study is one synthetic patient (Patient's Name SYNTH^P0001, SYNTH^P0002…, a Patient ID,
// sex, birth date and age) with an accession number, a study date and time and a Study
// Description "SYNTHETIC CHEST PHANTOM". Its series:
//
//   - 1-CR: Computed Radiography Image Storage, PA chest, MONOCHROME2.
//   - 2-DX: Digital X-Ray Image Storage – For Presentation, PA chest, MONOCHROME1: the stored
//     value is 4095 − v, so a reader must invert it (Presentation LUT Shape INVERSE).
//   - 3-CT, only when Config.CTSlices > 0: CT Image Storage, axial 512×512 slices 5 mm apart
//     of a plain body (trunk, lungs, heart, vertebra; no findings), signed 16-bit, Rescale
//     Intercept −1024 (HU), with Image Position and Orientation (Patient) and Slice Location.
//     The reference model takes only CR and DX, so the pipeline skips these with a reason.
//
// The CR and DX series have Config.ImagesPerSeries images each, all of the same phantom: image
// 1 is the phantom as rendered, image k > 1 the same phantom slightly blurred (the generator's
// blur, as in training), differently for each k; CR image k and DX image k show the same
// pixels. The 64×64 phantom is resized to Config.Size with bilinear interpolation; 16 bits
// allocated, 12 stored, unsigned; Pixel Spacing and Imager Pixel Spacing span a 350 mm field;
// Window Center 2048, Width 4096; no rescale in CR, the identity (slope 1, intercept 0) that
// the DX Image module requires in DX.
//
// Every instance is Explicit VR Little Endian with File Meta Information (pacsflow's
// Implementation Class UID), Image Type DERIVED\SECONDARY, Burned In Annotation NO,
// Manufacturer "pacsflow synth", Synthetic Data (0008,001C) YES, a Derivation Description
// naming the generator, and Series Descriptions starting with "SYNTHETIC"; there are no
// private elements, and nothing in the files tells the findings.
//
// # Determinism
//
// Everything written is a function of the Config: the same Config gives the same files and the
// same truth.json, byte for byte. UIDs are 2.25 UIDs of name-based UUIDs (RFC 9562 version 8)
// hashed from Config.Seed, the study's index and the object, so another seed gives other UIDs.
//
// # Output
//
// Write lays out DIR/<Study Instance UID>/<series number>-<modality>/<instance number>.dcm and
// writes DIR/truth.json last, once every instance is written:
//
//	{
//	  "generator": "pacsflow synth",
//	  "seed": 42, "finding": "random", "images_per_series": 2, "size": 512, "ct_slices": 0,
//	  "labels": ["nodule", "effusion", "fracture"],
//	  "studies": [{
//	    "study_instance_uid": "2.25.…", "accession_number": "SYN…",
//	    "patient_id": "SYN…", "patient_name": "SYNTH^P0001",
//	    "labels": {"nodule": true, "effusion": false, "fracture": false},
//	    "findings": {"nodule": {"box": [y0, x0, y1, x1], "side": "right", "zone": "upper"}},
//	    "report": "a nodule is seen in the right upper zone .",
//	    "phantom_seed": 1234,
//	    "files": [{"path": "2.25.…/1-CR/1.dcm", "modality": "CR",
//	               "series_instance_uid": "2.25.…", "sop_instance_uid": "2.25.…"}, …]
//	  }, …]
//	}
//
// labels holds every label; findings only those present, with the generator's box (fractions
// of the image's rows and columns, so the same at any size and in CR and DX alike), the
// patient's side (the patient's right is on the image's left) and the lung zone. report is the
// generator's templated report. phantom_seed reproduces the phantom with model/phantoms.py:
// sample(numpy.random.default_rng(phantom_seed), flags). files are relative to DIR, slash
// separated, CT slices included.
package synth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Labels are the findings a phantom may have, in the generator's order.
var Labels = [...]string{"nodule", "effusion", "fracture"}

// Finding modes of Config.Finding; a label name is the fifth kind of value.
const (
	// FindingRandom gives each study each label with probability ½, independently, as the
	// generator samples its training data.
	FindingRandom = "random"
	// FindingNone gives no study any finding.
	FindingNone = "none"
	// FindingAny gives every study at least one finding: one of the seven non-empty
	// combinations, each as likely.
	FindingAny = "any"
	// FindingMixed is a balanced set for tests: the 1st, 3rd, 5th… study has no finding, the
	// 2nd, 4th, 6th… one finding, cycling through nodule, effusion, fracture.
	FindingMixed = "mixed"
)

// FindingChoices returns the values Config.Finding may take.
func FindingChoices() []string {
	return append([]string{FindingRandom, FindingNone, FindingAny, FindingMixed}, Labels[:]...)
}

// Defaults of Config's zero values.
const (
	DefaultImagesPerSeries = 2
	DefaultSize            = 512
)

// Size bounds of the CR and DX images.
const (
	MinSize = PhantomSize
	MaxSize = 4096
)

// renderBatch is the most studies whose phantoms are rendered at once: it bounds the memory
// the phantoms take (8 KiB a rendering), while each Render call costs a Python start-up.
const renderBatch = 500

// Config says what Write writes.
type Config struct {
	// Studies is the number of studies, at least 1.
	Studies int
	// ImagesPerSeries is the number of images in each of the CR and DX series; 0 means
	// DefaultImagesPerSeries.
	ImagesPerSeries int
	// Size is the rows and columns of the CR and DX images, MinSize to MaxSize; 0 means
	// DefaultSize.
	Size int
	// CTSlices is the number of slices of the CT series; 0 leaves the series out.
	CTSlices int
	// Finding says which findings the studies have: one of FindingChoices; "" means
	// FindingRandom.
	Finding string
	// Seed fixes everything written.
	Seed uint64
	// Progress, when set, is called after each study is written, with the number written so
	// far and the number of studies.
	Progress func(written, total int)
}

func (c Config) withDefaults() Config {
	if c.ImagesPerSeries == 0 {
		c.ImagesPerSeries = DefaultImagesPerSeries
	}
	if c.Size == 0 {
		c.Size = DefaultSize
	}
	if c.Finding == "" {
		c.Finding = FindingRandom
	}
	return c
}

// Validate reports what is wrong with the Config, its zero values taken as their defaults.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.Studies < 1 {
		errs = append(errs, fmt.Errorf("%d studies: want at least 1", c.Studies))
	}
	if c.ImagesPerSeries < 1 {
		errs = append(errs, fmt.Errorf("%d images per series: want at least 1", c.ImagesPerSeries))
	}
	if c.Size < MinSize || c.Size > MaxSize {
		errs = append(errs, fmt.Errorf("image size %d: want %d to %d", c.Size, MinSize, MaxSize))
	}
	if c.CTSlices < 0 {
		errs = append(errs, fmt.Errorf("%d CT slices: want 0 (no CT series) or more", c.CTSlices))
	}
	if !slices.Contains(FindingChoices(), c.Finding) {
		errs = append(errs, fmt.Errorf("finding %q: want one of %s", c.Finding, strings.Join(FindingChoices(), ", ")))
	}
	return errors.Join(errs...)
}

// flags returns the findings of study i.
func (c Config) flags(i int) [len(Labels)]bool {
	var f [len(Labels)]bool
	bits := func(b int) {
		for k := range f {
			f[k] = b>>k&1 == 1
		}
	}
	d := deriver{c.Seed, i}
	switch c.Finding {
	case FindingRandom:
		bits(d.intn("findings", 1<<len(Labels)))
	case FindingAny:
		bits(1 + d.intn("findings", 1<<len(Labels)-1))
	case FindingMixed:
		if i%2 == 1 {
			f[i/2%len(Labels)] = true
		}
	case FindingNone:
	default:
		f[slices.Index(Labels[:], c.Finding)] = true
	}
	return f
}

// Truth is the ground truth of a run: the content of truth.json (see the package doc).
type Truth struct {
	Generator       string   `json:"generator"`
	Seed            uint64   `json:"seed"`
	Finding         string   `json:"finding"`
	ImagesPerSeries int      `json:"images_per_series"`
	Size            int      `json:"size"`
	CTSlices        int      `json:"ct_slices"`
	Labels          []string `json:"labels"`
	Studies         []Study  `json:"studies"`
}

// Study is the ground truth of one study.
type Study struct {
	StudyInstanceUID string              `json:"study_instance_uid"`
	AccessionNumber  string              `json:"accession_number"`
	PatientID        string              `json:"patient_id"`
	PatientName      string              `json:"patient_name"`
	Labels           map[string]bool     `json:"labels"`
	Findings         map[string]Location `json:"findings"`
	Report           string              `json:"report"`
	PhantomSeed      uint64              `json:"phantom_seed"`
	Files            []File              `json:"files"`
}

// HasFindings reports whether the study has any finding.
func (s *Study) HasFindings() bool { return len(s.Findings) > 0 }

// File is one instance written.
type File struct {
	// Path is relative to the output folder, slash separated.
	Path              string `json:"path"`
	Modality          string `json:"modality"`
	SeriesInstanceUID string `json:"series_instance_uid"`
	SOPInstanceUID    string `json:"sop_instance_uid"`
}

// TruthFile is the name of the ground truth file in the output folder.
const TruthFile = "truth.json"

// Result is what Write wrote.
type Result struct {
	Truth Truth
	// Instances is the number of DICOM files, Bytes their total size.
	Instances int
	Bytes     int64
}

// Write writes the studies cfg asks for into dir, rendering their phantoms with src, then
// dir/truth.json. dir must be empty or not exist, so that truth.json describes everything in
// it; it is created as needed. When Write fails or ctx ends, dir holds what was written so far
// and no truth.json.
func Write(ctx context.Context, dir string, cfg Config, src PhantomSource) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if err := emptyDir(dir); err != nil {
		return nil, err
	}
	res := &Result{Truth: Truth{
		Generator: "pacsflow synth", Seed: cfg.Seed, Finding: cfg.Finding,
		ImagesPerSeries: cfg.ImagesPerSeries, Size: cfg.Size, CTSlices: cfg.CTSlices,
		Labels: slices.Clone(Labels[:]),
	}}
	for first := 0; first < cfg.Studies; first += renderBatch {
		specs := make([]PhantomSpec, min(renderBatch, cfg.Studies-first))
		for j := range specs {
			specs[j] = PhantomSpec{Seed: deriver{cfg.Seed, first + j}.uint64("phantom seed"), Flags: cfg.flags(first + j), Variants: cfg.ImagesPerSeries}
		}
		phantoms, err := src.Render(ctx, specs)
		if err != nil {
			return nil, fmt.Errorf("render phantoms: %w", err)
		}
		if len(phantoms) != len(specs) {
			return nil, fmt.Errorf("render phantoms: got %d, want %d", len(phantoms), len(specs))
		}
		for j, ph := range phantoms {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("write studies: %w", err)
			}
			st, err := writeStudy(dir, cfg, first+j, specs[j], ph, res)
			if err != nil {
				return nil, err
			}
			res.Truth.Studies = append(res.Truth.Studies, st)
			if cfg.Progress != nil {
				cfg.Progress(first+j+1, cfg.Studies)
			}
		}
	}
	b, err := json.MarshalIndent(res.Truth, "", " ")
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", TruthFile, err)
	}
	if err := os.WriteFile(filepath.Join(dir, TruthFile), append(b, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", TruthFile, err)
	}
	return res, nil
}

// emptyDir makes sure that dir exists and is empty.
func emptyDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("output folder: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("output folder: %w", err)
	}
	defer f.Close()
	switch _, err := f.Readdirnames(1); {
	case err == nil:
		return fmt.Errorf("output folder %s is not empty: name a new or empty one, so that %s describes everything in it", dir, TruthFile)
	case !errors.Is(err, io.EOF):
		return fmt.Errorf("output folder: %w", err)
	}
	return nil
}
