package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/pacsflow/pacsflow/pkg/synth"
)

// venvPython is where ./scripts/build.sh puts a Python with numpy, relative to the checkout.
var venvPython = filepath.Join(".venv", "bin", "python")

func runSynth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("synth --out DIR [flags]",
		"Writes synthetic DICOM studies with known ground truth, to feed the pipeline (storescu DIR)\n"+
			"realistic input whose findings are known. Each study is a synthetic patient (SYNTH^P0001...)\n"+
			"with a CR series (PA chest, MONOCHROME2) and a DX series (For Presentation, MONOCHROME1:\n"+
			"stored 4095-v) of --images images each, all of one chest phantom rendered by the generator the\n"+
			"reference model was trained on (model/phantoms.py, embedded; image 1 as rendered, the others\n"+
			"slightly blurred), resized from 64x64 to --size; with --ct-slices, also a CT series of 512x512\n"+
			"axial slices of a plain body (signed, HU with Rescale Intercept -1024; the reference model\n"+
			"takes only CR and DX, so the pipeline skips them). Explicit VR Little Endian, Synthetic Data\n"+
			"YES, Manufacturer \"pacsflow synth\"; the files do not tell the findings. The same flags give\n"+
			"the same files, byte for byte; --seed 0 picks a seed, printed in the summary.\n\n"+
			"--finding: random (each finding with probability 1/2), none, any (at least one finding per\n"+
			"study), mixed (1st, 3rd... study none; 2nd, 4th... one finding, cycling nodule, effusion,\n"+
			"fracture), or nodule, effusion or fracture (every study has it).\n\n"+
			"Layout: DIR/<study UID>/<series number>-<modality>/<instance number>.dcm, and last\n"+
			"DIR/truth.json (DIR must be new or empty):\n"+
			"  {\"generator\": \"pacsflow synth\", \"seed\": S, \"finding\": F, \"images_per_series\": K,\n"+
			"   \"size\": PX, \"ct_slices\": C, \"labels\": [\"nodule\", \"effusion\", \"fracture\"],\n"+
			"   \"studies\": [{\"study_instance_uid\", \"accession_number\", \"patient_id\", \"patient_name\",\n"+
			"     \"labels\": {label: true|false}, \"findings\": {label: {\"box\": [y0,x0,y1,x1], \"side\", \"zone\"}},\n"+
			"     \"report\", \"phantom_seed\", \"files\": [{\"path\", \"modality\", \"series_instance_uid\",\n"+
			"     \"sop_instance_uid\"}]}]}\n"+
			"findings lists the labels present: box in fractions of rows and columns (any size, CR and DX\n"+
			"alike), side the patient's (right is on the image's left), zone upper, middle or lower. report\n"+
			"is the generator's report; files are relative to DIR.\n\n"+
			"Needs Python 3 with numpy (./scripts/build.sh creates .venv with it).", stderr)
	out := fs.String("out", "", "output folder, new or empty (required)")
	studies := fs.Int("studies", 10, "number of studies")
	finding := fs.String("finding", synth.FindingRandom, "which findings the studies have: "+strings.Join(synth.FindingChoices(), ", "))
	seed := fs.Uint64("seed", 0, "seed of everything written; 0: pick one")
	images := fs.Int("images", synth.DefaultImagesPerSeries, "images in each of the CR and DX series")
	size := fs.Int("size", synth.DefaultSize, fmt.Sprintf("rows and columns of the CR and DX images (%d to %d)", synth.MinSize, synth.MaxSize))
	ctSlices := fs.Int("ct-slices", 0, "slices of a CT series in each study; 0: no CT series")
	python := fs.String("python", "", "Python 3 with numpy that runs the phantom generator; default "+venvPython+" if it exists, else python3")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() > 0 {
		fs.Usage()
		return errUsage
	}
	cfg := synth.Config{Studies: *studies, ImagesPerSeries: *images, Size: *size, CTSlices: *ctSlices, Finding: *finding, Seed: *seed}
	if cfg.Seed == 0 {
		var b [8]byte
		_, _ = rand.Read(b[:]) // crypto/rand.Read never returns an error
		// A seed short enough to type again.
		cfg.Seed = 1 + binary.LittleEndian.Uint64(b[:])%(1<<31)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	py := *python
	if py == "" {
		py = "python3"
		if _, err := os.Stat(venvPython); err == nil {
			py = venvPython
		}
	}
	fmt.Fprintf(stderr, "synth: writing %d studies; rendering their phantoms with %s\n", cfg.Studies, py)
	cfg.Progress = func(written, total int) {
		if written%10 == 0 || written == total {
			fmt.Fprintf(stderr, "synth: %d of %d studies written\n", written, total)
		}
	}
	res, err := synth.Write(ctx, *out, cfg, synth.Python{Interpreter: py})
	if errors.Is(err, synth.ErrNoPython) || errors.Is(err, synth.ErrNoNumpy) {
		return fmt.Errorf("%w (--python or PACSFLOW_PYTHON names it)", err)
	}
	if err != nil {
		return err
	}
	with := 0
	for i := range res.Truth.Studies {
		if res.Truth.Studies[i].HasFindings() {
			with++
		}
	}
	fmt.Fprintf(stdout, "wrote %d studies, %d instances, %.1f MB to %s (seed %d, finding %s): %d with findings, %d without; ground truth in %s\n",
		len(res.Truth.Studies), res.Instances, float64(res.Bytes)/1e6, *out, cfg.Seed, cfg.Finding,
		with, len(res.Truth.Studies)-with, filepath.Join(*out, synth.TruthFile))
	return nil
}
