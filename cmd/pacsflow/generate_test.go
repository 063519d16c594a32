package main_test

// End-to-end tests of the generate service on the real parts: studies from
// `pacsflow synth` sent by DCMTK's storescu to `pacsflow up`, the reference
// model's generate signature through TensorFlow, images stored as DICOM.

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/imaging"
)

var requestLineRE = regexp.MustCompile(`(?m)^request (cli-[0-9a-f]+): `)

// TestGenerateEndToEnd: a policy rule generates images for every study with
// a nodule; a request from the command line restores a study's image, and
// the images are fetched as DICOM and PNG; the same seed gives the same
// pixels; a generated image sent back in from a clinical AE is refused.
func TestGenerateEndToEnd(t *testing.T) {
	requireTools(t, "storescu", "dcmdump")
	bin := buildPacsflow(t)
	_, files, truth := synthStudies(t, bin, 2) // the second has a finding (mixed: odd studies)
	up := startPipeline(t, bin, upArgs(t.TempDir(), "objectstore", "--model", referenceModel(t),
		"--generate-policy", "nodule=synthesize:2,effusion=synthesize:2,fracture=synthesize:2")...)
	js := connectJS(t, up.natsURL)
	storeSCU(t, up.dicomAddr, files).mustSucceed(t)

	// The policy: one request of 2 images for the study with a finding, none for the other.
	evs := waitEvents(t, js, "the policy's images", countType(events.TypeAugmentationGenerated, 1))
	positive := truth.Studies[1]
	g := decodeData[events.AugmentationGenerated](t, ofType(evs, events.TypeAugmentationGenerated)[0])
	if g.SourceStudyInstanceUID != positive.StudyInstanceUID || len(g.Objects) != 2 || g.Task != "synthesize" || !g.Synthetic {
		t.Errorf("policy images %+v, want 2 synthesized for study %s", g, positive.StudyInstanceUID)
	}

	// A request from the command line, waited for.
	clean := truth.Studies[0].StudyInstanceUID
	req := start(t, bin, "generate", "request", "--nats-url", up.natsURL, "--study", clean, "--task", "restore", "--count", "2", "--seed", "9", "--wait", "60s")
	req.mustSucceed(t)
	m := requestLineRE.FindStringSubmatch(req.stdout.String())
	if m == nil || strings.Count(req.stdout.String(), " seed ") != 2 {
		t.Fatalf("generate request printed:\n%s", req.stdout.String())
	}
	out := filepath.Join(t.TempDir(), "fetched")
	start(t, bin, "generate", "fetch", "--nats-url", up.natsURL, "--request", m[1], "--out", out).mustSucceed(t)
	start(t, bin, "generate", "fetch", "--nats-url", up.natsURL, "--request", m[1], "--out", out, "--png").mustSucceed(t)
	dcms, _ := filepath.Glob(filepath.Join(out, "*.dcm"))
	pngs, _ := filepath.Glob(filepath.Join(out, "*.png"))
	if len(dcms) != 2 || len(pngs) != 2 {
		t.Fatalf("fetched %v and %v, want 2 DICOM files and 2 PNGs", dcms, pngs)
	}
	for _, f := range dcms {
		d := start(t, "dcmdump", "-q", "+E", f)
		d.mustSucceed(t)
		for _, want := range []string{"(0008,0064) CS [SYN]", "SYNTHETIC", "PACSFLOW GENERATE 1"} {
			if !strings.Contains(d.stdout.String(), want) {
				t.Errorf("%s lacks %q:\n%s", f, want, d.stdout.String())
			}
		}
	}
	for _, e := range rawEvents(t, js, "PACSFLOW") {
		if err := events.ValidateMessage(e.Subject, e.Header, e.Data); err != nil {
			t.Errorf("stream sequence %d: %v", e.Sequence, err)
		}
	}

	// The same seed, another request (count 1): the same pixels as the first image.
	again := start(t, bin, "generate", "request", "--nats-url", up.natsURL, "--study", clean, "--task", "restore", "--count", "1", "--seed", "9", "--wait", "60s")
	again.mustSucceed(t)
	m2 := requestLineRE.FindStringSubmatch(again.stdout.String())
	out2 := filepath.Join(t.TempDir(), "again")
	start(t, bin, "generate", "fetch", "--nats-url", up.natsURL, "--request", m2[1], "--out", out2).mustSucceed(t)
	second, _ := filepath.Glob(filepath.Join(out2, "*.dcm"))
	first := filepath.Join(out, firstSOP(t, js, m[1])+".dcm")
	if len(second) != 1 || !slices.Equal(pixelsOf(t, second[0]), pixelsOf(t, first)) {
		t.Errorf("seed 9 gave other pixels in a second request")
	}

	// A generated image sent back from a clinical AE (STORESCU) is refused.
	back := storeSCU(t, up.dicomAddr, dcms[:1], "-d")
	_ = back.wait(t)
	if log := back.stdout.String() + back.stderr.String(); !strings.Contains(log, "0x0124") && !strings.Contains(strings.ToLower(log), "not authorized") {
		t.Errorf("storescu of a generated image: no 0124 refusal:\n%s", log)
	}
	up.interrupt(t)
}

// firstSOP is the SOP Instance UID of a request's first image (its first seed).
func firstSOP(t *testing.T, js jetstream.JetStream, request string) string {
	t.Helper()
	for _, e := range ofType(readEvents(t, js), events.TypeAugmentationGenerated) {
		if g := decodeData[events.AugmentationGenerated](t, e); g.RequestID == request {
			return g.Objects[0].SOPInstanceUID
		}
	}
	t.Fatalf("no generated event for request %s", request)
	return ""
}

func pixelsOf(t *testing.T, path string) []float32 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := imaging.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return f.Values
}

// TestGenerateServe: `pacsflow generate serve` on its own (as on a GPU node)
// beside `pacsflow up --generate=false` takes a request and its images are
// stored; --generate-batch-size reaches the service.
func TestGenerateServe(t *testing.T) {
	requireTools(t, "storescu")
	bin := buildPacsflow(t)
	_, files, truth := synthStudies(t, bin, 1)
	up := startPipeline(t, bin, upArgs(t.TempDir(), "objectstore", "--model", referenceModel(t), "--generate=false")...)
	if strings.Contains(up.stdout.String(), "generate: requests on") {
		t.Fatalf("up runs the generate service with --generate=false:\n%s", up.stdout.String())
	}
	gen := start(t, bin, "generate", "serve", "--nats-url", up.natsURL, "--http-addr", "127.0.0.1:0", "--model", referenceModel(t),
		"--generate-batch-size", "3")
	var httpURL string
	waitFor(t, "pacsflow generate serve listening", func() bool {
		out := gen.stdout.String()
		if m := httpLineRE.FindStringSubmatch(out); m != nil {
			httpURL = m[1]
		}
		return httpURL != "" && strings.Contains(out, "generate: requests on")
	})
	storeSCU(t, up.dicomAddr, files).mustSucceed(t)
	req := start(t, bin, "generate", "request", "--nats-url", up.natsURL, "--study", truth.Studies[0].StudyInstanceUID,
		"--task", "synthesize", "--count", "6", "--seed", "3", "--wait", "90s")
	req.mustSucceed(t)
	if n := strings.Count(req.stdout.String(), " seed "); n != 6 {
		t.Fatalf("generate request printed %d images, want 6:\n%s", n, req.stdout.String())
	}
	// Six images in batches of at most three: every batch is in the bucket
	// up to 4, and there are two at least.
	_, metrics := httpGet(t, httpURL+"/metrics")
	upTo4 := regexp.MustCompile(`pacsflow_generate_batch_size_bucket\{le="4"\} (\d+)`).FindStringSubmatch(metrics)
	count := regexp.MustCompile(`pacsflow_generate_batch_size_count (\d+)`).FindStringSubmatch(metrics)
	if upTo4 == nil || count == nil || upTo4[1] != count[1] || count[1] == "0" || count[1] == "1" {
		t.Errorf("batches of --generate-batch-size 3 expected; metrics:\n%s", grepLines(metrics, "pacsflow_generate_batch_size"))
	}
	if err := gen.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	gen.mustSucceed(t)
	up.interrupt(t)
}
