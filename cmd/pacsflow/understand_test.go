package main_test

// End-to-end tests of the understand service on the real parts: studies
// written by `pacsflow synth` (known findings), sent by DCMTK's storescu to
// `pacsflow up`, analyzed by the reference model through TensorFlow.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/synth"
)

// referenceModel is the repository's reference model, for the binary
// under test, which runs in this package's folder.
func referenceModel(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../../model/reference")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// synthStudies writes n studies with `pacsflow synth` (half with one
// finding, half without; 2 CR, 2 DX and one CT image each, 256×256) and
// returns their folder, files and ground truth.
func synthStudies(t *testing.T, bin string, n int) (string, []string, *synth.Truth) {
	t.Helper()
	dir, truth := writeSynth(t, bin, "--studies", strconv.Itoa(n), "--finding", "mixed", "--seed", "11", "--ct-slices", "1")
	return dir, filesOf(truth, dir), truth
}

// writeSynth runs `pacsflow synth` with args (256×256 images) into a new
// folder and returns it with the ground truth.
func writeSynth(t *testing.T, bin string, args ...string) (string, *synth.Truth) {
	t.Helper()
	py := os.Getenv("PACSFLOW_PYTHON")
	if py == "" {
		t.Fatal("PACSFLOW_PYTHON is not set: run ./scripts/test.sh, or set it to a Python with numpy (.venv/bin/python, made by ./scripts/build.sh)")
	}
	dir := filepath.Join(t.TempDir(), "studies")
	start(t, bin, append([]string{"synth", "--out", dir, "--size", "256", "--python", py}, args...)...).mustSucceed(t)
	return dir, readTruth(t, dir)
}

// readTruth reads the ground truth pacsflow synth wrote into dir.
func readTruth(t *testing.T, dir string) *synth.Truth {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, synth.TruthFile))
	if err != nil {
		t.Fatal(err)
	}
	var truth synth.Truth
	if err := json.Unmarshal(b, &truth); err != nil {
		t.Fatal(err)
	}
	return &truth
}

// aiResults are the results of the studies, by study, from the stream.
type aiResults struct {
	findings map[string][]*events.AIFindings
	reports  map[string][]*events.AIReportDraft
	triages  map[string][]*events.AITriage
}

// readResults reads every ai event of the stream, checking each against
// the event contract.
func readResults(t *testing.T, evs []*events.Received) *aiResults {
	t.Helper()
	r := &aiResults{findings: map[string][]*events.AIFindings{}, reports: map[string][]*events.AIReportDraft{}, triages: map[string][]*events.AITriage{}}
	for _, e := range evs {
		switch e.Type {
		case events.TypeAIFindings:
			d := decodeData[events.AIFindings](t, e)
			r.findings[d.Study.StudyInstanceUID] = append(r.findings[d.Study.StudyInstanceUID], d)
		case events.TypeAIReportDraft:
			d := decodeData[events.AIReportDraft](t, e)
			r.reports[d.Study.StudyInstanceUID] = append(r.reports[d.Study.StudyInstanceUID], d)
		case events.TypeAITriage:
			d := decodeData[events.AITriage](t, e)
			r.triages[d.Study.StudyInstanceUID] = append(r.triages[d.Study.StudyInstanceUID], d)
			if want := events.AITriageSubject(d.Level, d.Modalities, "PACSFLOW"); e.NATSSubject != want {
				t.Errorf("triage of %s on %s, want %s", d.Study.StudyInstanceUID, e.NATSSubject, want)
			}
		default:
			continue
		}
	}
	return r
}

var levelRank = map[string]int{"ROUTINE": 0, "URGENT": 1, "STAT": 2}

// TestUnderstandEndToEnd: 24 synthetic studies, half with a finding, go
// through storescu, pacsflow up and the reference model; each gets one
// findings, draft report and triage event that follow the contract, and the
// triage ranks the studies with findings above those without. On each
// runtime: TensorFlow, and pjrt with the model's StableHLO on XLA's CPU
// plugin (PACSFLOW_PJRT_PLUGIN, which ./scripts/test.sh sets).
func TestUnderstandEndToEnd(t *testing.T) {
	requireTools(t, "storescu")
	bin := buildPacsflow(t)
	t.Run("tensorflow", func(t *testing.T) { understandEndToEnd(t, bin, "--model", referenceModel(t)) })
	t.Run("pjrt", func(t *testing.T) {
		plugin := os.Getenv("PACSFLOW_PJRT_PLUGIN")
		if plugin == "" {
			t.Fatal("PACSFLOW_PJRT_PLUGIN is not set: run ./scripts/test.sh, which installs XLA's CPU PJRT plugin")
		}
		understandEndToEnd(t, bin, "--model", stableHLOModel(t), "--model-runtime", "pjrt", "--pjrt-plugin", plugin, "--batch-size", "8")
	})
}

// stableHLOModel copies the reference model with its StableHLO modules for batch sizes 1 and 8
// (model/export_stablehlo.py) into a temporary folder.
func stableHLOModel(t *testing.T) string {
	t.Helper()
	py := os.Getenv("PACSFLOW_PYTHON")
	if py == "" {
		t.Fatal("PACSFLOW_PYTHON is not set: run ./scripts/test.sh, or set it to a Python with tensorflow-cpu (.venv/bin/python)")
	}
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(referenceModel(t))); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "stablehlo")); err != nil {
		t.Fatal(err)
	}
	start(t, py, "../../model/export_stablehlo.py", "--model", dir, "--batch-sizes", "1,8").mustSucceed(t)
	return dir
}

func understandEndToEnd(t *testing.T, bin string, modelArgs ...string) {
	const n = 24
	dir, files, truth := synthStudies(t, bin, n)
	up := startPipeline(t, bin, upArgs(t.TempDir(), "objectstore", modelArgs...)...)
	js := connectJS(t, up.natsURL)
	storeSCU(t, up.dicomAddr, files).mustSucceed(t)
	waitEvents(t, js, "a triage per study", countType(events.TypeAITriage, n))
	for _, m := range rawEvents(t, js, "PACSFLOW") {
		if err := events.ValidateMessage(m.Subject, m.Header, m.Data); err != nil {
			t.Errorf("stream sequence %d: %v\ndata: %s", m.Sequence, err, m.Data)
		}
	}
	res := readResults(t, readEvents(t, js))

	type scored struct {
		positive    bool
		level       int
		score       float64
		labelRight  bool
		description string
	}
	var studies []scored
	for _, s := range truth.Studies {
		uid := s.StudyInstanceUID
		f, r, tr := res.findings[uid], res.reports[uid], res.triages[uid]
		if len(f) != 1 || len(r) != 1 || len(tr) != 1 {
			t.Errorf("study %s: %d findings, %d report, %d triage events; want one each", uid, len(f), len(r), len(tr))
			continue
		}
		// 2 CR and 2 DX analyzed; the CT image skipped, with the reason.
		if f[0].NumImages != 4 || len(f[0].Skipped) != 1 || !strings.Contains(f[0].Skipped[0].Reason, "modality CT is not one the model accepts") {
			t.Errorf("study %s: %d images analyzed, skipped %+v; want 4 and the CT image", uid, f[0].NumImages, f[0].Skipped)
		}
		if !r[0].MachineGenerated || r[0].Text == "" || !strings.Contains(r[0].Model.IntendedUse, "Not for clinical use") {
			t.Errorf("study %s: draft %+v", uid, r[0])
		}
		sc := scored{positive: s.HasFindings(), level: levelRank[tr[0].Level], score: tr[0].Score}
		top := slices.MaxFunc(f[0].Findings, func(a, b events.Finding) int {
			switch {
			case a.Probability < b.Probability:
				return -1
			case a.Probability > b.Probability:
				return 1
			}
			return 0
		})
		sc.labelRight = s.Labels[top.Label]
		sc.description = tr[0].Level + " " + tr[0].Reason + " | truth " + s.Report
		studies = append(studies, sc)
	}
	// Ranking quality: the probability that a study with a finding is
	// triaged above one without (ROC AUC over level, then score; ties
	// count one half).
	var pairs, wins float64
	pos, right, urgentPos, routineNeg := 0, 0, 0, 0
	for _, p := range studies {
		if !p.positive {
			if p.level == 0 {
				routineNeg++
			}
			continue
		}
		pos++
		if p.labelRight {
			right++
		}
		if p.level > 0 {
			urgentPos++
		}
		for _, q := range studies {
			if q.positive {
				continue
			}
			pairs++
			switch {
			case p.level > q.level || p.level == q.level && p.score > q.score:
				wins++
			case p.level == q.level && p.score == q.score:
				wins += 0.5
			}
		}
	}
	auc := wins / pairs
	t.Logf("reference model on %d synthetic studies (%d with a finding): triage ranking AUC %.3f; %d/%d with a finding triaged URGENT or STAT; %d/%d without triaged ROUTINE; most probable label right in %d/%d",
		len(studies), pos, auc, urgentPos, pos, routineNeg, len(studies)-pos, right, pos)
	// The reference model separates its phantoms almost perfectly (model
	// card: per-label AUC ≥ 0.998); a study-level AUC below 0.9 means the
	// pipeline feeds it wrong pixels.
	if auc < 0.9 {
		for _, s := range studies {
			t.Log(s.description)
		}
		t.Errorf("triage ranking AUC %.3f, want ≥ 0.9", auc)
	}

	// ai.ask about a study with a finding, through the command line.
	var asked string
	for _, s := range truth.Studies {
		if s.HasFindings() {
			asked = s.StudyInstanceUID
			break
		}
	}
	ask := start(t, bin, "ask", "--nats-url", up.natsURL, asked, "is there an abnormality?")
	ask.mustSucceed(t)
	if !regexp.MustCompile(`(?s)^\S.*\n\(machine-generated by pacsflow-reference .* about image 2\.25\.\d+ frame 1; `).MatchString(ask.stdout.String()) {
		t.Errorf("pacsflow ask printed:\n%s", ask.stdout.String())
	}
	unknown := start(t, bin, "ask", "--nats-url", up.natsURL, "1.2.3", "is there a nodule?")
	if err := unknown.wait(t); exitCode(err) != 1 || !strings.Contains(unknown.stderr.String(), "study 1.2.3 has not been analyzed") {
		t.Errorf("ask about an unknown study: %v\n%s", err, unknown.stderr.String())
	}

	// A late image with a finding, added to a study without one (DCMTK's dcmodify gives
	// it the study's UID, a new series and SOP Instance UID): pacs.study.updated, then a
	// generation 2 result for the whole study that supersedes the first.
	requireTools(t, "dcmodify")
	var clean, withFinding *synth.Study
	for i := range truth.Studies {
		if s := &truth.Studies[i]; s.HasFindings() && withFinding == nil {
			withFinding = s
		} else if !s.HasFindings() && clean == nil {
			clean = s
		}
	}
	late := filepath.Join(t.TempDir(), "late.dcm")
	b, err := os.ReadFile(filepath.Join(dir, withFinding.Files[0].Path))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(late, b, 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, "dcmodify", "-nb", "-m", "(0020,000D)="+clean.StudyInstanceUID, "-m", "(0020,000E)="+clean.StudyInstanceUID+".99",
		"-m", "(0008,0018)="+clean.StudyInstanceUID+".99.1", late).mustSucceed(t)
	storeSCU(t, up.dicomAddr, []string{late}).mustSucceed(t)
	evs := waitEvents(t, js, "the updated study's triage", countType(events.TypeAITriage, n+1))
	res = readResults(t, evs)
	f, tr := res.findings[clean.StudyInstanceUID], res.triages[clean.StudyInstanceUID]
	if len(f) != 2 || len(tr) != 2 {
		t.Fatalf("study %s after a late image: %d findings and %d triage events, want 2 each", clean.StudyInstanceUID, len(f), len(tr))
	}
	if f[1].Generation != 2 || f[1].NumImages != 5 || tr[1].Generation != 2 || tr[0].Level != "ROUTINE" || tr[1].Level == "ROUTINE" {
		t.Errorf("generation 2 of %s: %d images, triage %s (was %s); want 5 images and the late finding raising the level",
			clean.StudyInstanceUID, f[1].NumImages, tr[1].Level, tr[0].Level)
	}
	up.interrupt(t)
}

// understandLineRE is the line `pacsflow understand` prints once it runs.
var understandLineRE = regexp.MustCompile(`(?m)^understand: results on `)

// startUnderstand runs `pacsflow understand` against the pipeline's NATS
// server and object store.
func startUnderstand(t *testing.T, bin, natsURL string) *process {
	t.Helper()
	p := start(t, bin, "understand", "--nats-url", natsURL, "--http-addr", "", "--model", referenceModel(t), "--batch-size", "8",
		"--ack-wait", "3s") // the studies the killed process held come back after 3 s
	waitFor(t, "pacsflow understand to run", func() bool {
		select {
		case <-p.done:
			t.Fatalf("pacsflow understand exited: %v\n%s\n%s", p.err, p.stdout.String(), p.stderr.String())
		default:
		}
		return understandLineRE.MatchString(p.stdout.String())
	})
	return p
}

// TestUnderstandKilled: the understand process is killed (SIGKILL) while
// it analyzes a backlog of studies, then started again; every study ends
// with exactly one result set, whatever the moment of the kill: results
// published before the kill are published again with the same IDs, which
// JetStream drops.
func TestUnderstandKilled(t *testing.T) {
	requireTools(t, "storescu")
	bin := buildPacsflow(t)
	const n = 12
	_, files, truth := synthStudies(t, bin, n)
	up := startPipeline(t, bin, upArgs(t.TempDir(), "objectstore")...)
	js := connectJS(t, up.natsURL)
	storeSCU(t, up.dicomAddr, files).mustSucceed(t)
	waitEvents(t, js, "the study events", countType(events.TypeStudyReceived, n))

	first := startUnderstand(t, bin, up.natsURL)
	waitEvents(t, js, "a first triage", countType(events.TypeAITriage, 1))
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = first.wait(t)
	before := len(ofType(readEvents(t, js), events.TypeAITriage))
	startUnderstand(t, bin, up.natsURL)
	evs := waitEvents(t, js, "a triage per study", countType(events.TypeAITriage, n))
	t.Logf("killed with %d of %d studies triaged", before, n)
	res := readResults(t, evs)
	for _, s := range truth.Studies {
		uid := s.StudyInstanceUID
		if f, r, tr := len(res.findings[uid]), len(res.reports[uid]), len(res.triages[uid]); f != 1 || r != 1 || tr != 1 {
			t.Errorf("study %s: %d findings, %d report, %d triage events; want one each", uid, f, r, tr)
		}
	}
	up.interrupt(t)
}

// TestUnderstandRefusesBadSettings: settings that cannot work are refused
// before anything starts, with the reason.
func TestUnderstandRefusesBadSettings(t *testing.T) {
	bin := buildPacsflow(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"understand", "--triage-thresholds", "nodule=0.9:0.5"}, "--triage-thresholds: triage threshold \"nodule=0.9:0.5\": want 0 ≤ URGENT ≤ STAT"},
		{append(upArgs(t.TempDir(), "fs"), "--model", referenceModel(t), "--triage-thresholds", "nodule"), "--triage-thresholds"},
		{append(upArgs(t.TempDir(), "fs"), "--model", "/nonexistent/model"), "--model /nonexistent/model: no such directory"},
	} {
		p := start(t, bin, c.args...)
		if err := p.wait(t); exitCode(err) != 1 || !strings.Contains(p.stderr.String(), c.want) {
			t.Errorf("pacsflow %s: %v, want exit 1 saying %q\n%s", strings.Join(c.args, " "), err, c.want, p.stderr.String())
		}
	}
}
