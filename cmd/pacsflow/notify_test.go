package main_test

// End-to-end tests of the notify service: the worklist page in a real
// browser (Debian's chromium, driven by chromedp) while DCMTK's storescu
// sends studies to `pacsflow up` with the reference model.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/bcrypt"
)

// worklistEntry is what the test reads of a worklist entry.
type worklistEntry struct {
	StudyInstanceUID string `json:"study_instance_uid"`
	Level            string `json:"level"`
	Pending          bool   `json:"pending"`
	Status           string `json:"status"`
	StatusBy         string `json:"status_by"`
}

// getWorklist reads the worklist through the API with basic authentication.
func getWorklist(t *testing.T, base, user, pass string) []worklistEntry {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/api/v1/worklist?limit=1000", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(user, pass)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusServiceUnavailable {
		return nil // loading
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET worklist: %s", resp.Status)
	}
	var page struct {
		Entries []worklistEntry `json:"entries"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		t.Fatal(err)
	}
	return page.Entries
}

// browser starts headless chromium for the test, sending the given
// Authorization header with every request of its page.
func browser(t *testing.T, authorization string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath("chromium"), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1400, 900))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": authorization}}); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	return ctx
}

// screenshot saves the page as a test artifact (go test -artifacts keeps
// them under -outputdir).
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(t.ArtifactDir(), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s", path)
}

// poll waits until the JavaScript expression is true in the page.
func poll(expression string, timeout time.Duration) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Poll[bool](expression, chromedp.WithPollingTimeout(timeout))(ctx, t)
		return err
	})
}

// TestWorklistPage: a study without a finding is on the worklist page; a
// study with one, sent while the page is open, appears at the top marked
// STAT without a reload; its view shows the preview and the draft marked
// machine-generated; "Start review" sets the status as the signed-in user.
func TestWorklistPage(t *testing.T) {
	requireTools(t, "storescu", "chromium")
	bin := buildPacsflow(t)
	py := os.Getenv("PACSFLOW_PYTHON")
	if py == "" {
		t.Fatal("PACSFLOW_PYTHON is not set: run ./scripts/test.sh, or set it to a Python with numpy (.venv/bin/python)")
	}
	dir := filepath.Join(t.TempDir(), "studies")
	start(t, bin, "synth", "--out", dir, "--studies", "2", "--finding", "mixed", "--seed", "5", "--size", "256", "--ct-slices", "0", "--python", py).mustSucceed(t)
	truth := readTruth(t, dir)
	negative, positive := truth.Studies[0], truth.Studies[1]
	if negative.HasFindings() || !positive.HasFindings() {
		t.Fatalf("synth --finding mixed: want the first study without a finding and the second with one")
	}
	filesOf := func(i int) []string {
		var out []string
		for _, f := range truth.Studies[i].Files {
			out = append(out, filepath.Join(dir, f.Path))
		}
		return out
	}

	const user, pass = "radiologist", "correct horse battery staple"
	hash, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(users, []byte(user+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := startPipeline(t, bin, upArgs(t.TempDir(), "objectstore", "--model", referenceModel(t), "--auth-users", users)...)
	if code, _ := httpGet(t, up.httpURL+"/api/v1/worklist"); code != http.StatusUnauthorized {
		t.Errorf("worklist without a credential: %d, want 401", code)
	}

	storeSCU(t, up.dicomAddr, filesOf(0)).mustSucceed(t)
	waitFor(t, "the study without a finding triaged", func() bool {
		e := getWorklist(t, up.httpURL, user, pass)
		return len(e) == 1 && !e[0].Pending
	})

	ctx := browser(t, "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx,
		chromedp.Navigate(up.httpURL+"/"),
		poll(`window.pacsflowReady === true`, time.Minute),
		chromedp.WaitVisible(chromedp.CSS(`#worklist tr[data-study="`+negative.StudyInstanceUID+`"]`)),
	); err != nil {
		t.Fatalf("the page with the first study: %v", err)
	}
	// Marks this page load: a reload would lose it.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.sameLoad = true`)); err != nil {
		t.Fatal(err)
	}
	if title, err := chromedp.Run(ctx, chromedp.Title()); err != nil || title != "pacsflow worklist" {
		t.Errorf("title %q, %v", title, err)
	}

	storeSCU(t, up.dicomAddr, filesOf(1)).mustSucceed(t)
	top := `document.querySelector('#worklist tr')`
	if err := chromedp.Do(ctx, poll(top+`?.dataset.study === "`+positive.StudyInstanceUID+`" && `+top+`.classList.contains("stat") && !`+
		top+`.classList.contains("pending")`, 2*time.Minute)); err != nil {
		t.Fatalf("the study with a finding at the top, marked STAT: %v", err)
	}
	if same, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.sameLoad === true`)); err != nil || !same {
		t.Errorf("the page was reloaded (%v)", err)
	}
	screenshot(t, ctx, "worklist.png")

	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`#worklist tr[data-study="`+positive.StudyInstanceUID+`"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#draft`)),
		poll(`document.querySelector('#preview').complete && document.querySelector('#preview').naturalWidth > 0`, time.Minute),
	); err != nil {
		t.Fatalf("the study view: %v", err)
	}
	draft, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`#draft`)))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.ToUpper(draft), "MACHINE-GENERATED") || !strings.Contains(strings.ToUpper(draft), "NOT REVIEWED") {
		t.Errorf("draft %q: want it marked machine-generated, not reviewed", draft)
	}
	screenshot(t, ctx, "study.png")

	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`#btn-review`)),
		chromedp.WaitVisible(chromedp.CSS(`#worklist tr[data-study="`+positive.StudyInstanceUID+`"] .status.in_review`)),
	); err != nil {
		t.Fatalf("start review: %v", err)
	}
	for _, e := range getWorklist(t, up.httpURL, user, pass) {
		if e.StudyInstanceUID == positive.StudyInstanceUID && (e.Status != "in_review" || e.StatusBy != user) {
			t.Errorf("after Start review: %+v, want in_review by %s", e, user)
		}
	}
	up.interrupt(t)
}

// Without a credential, pacsflow up refuses to serve the worklist beyond
// loopback.
func TestWorklistNotExposedWithoutCredential(t *testing.T) {
	bin := buildPacsflow(t)
	p := start(t, bin, upArgs(t.TempDir(), "objectstore", "--http-addr", "0.0.0.0:0")...)
	if err := p.wait(t); err == nil || !strings.Contains(p.stderr.String(), "needs a credential") {
		t.Errorf("up on 0.0.0.0 without a credential: %v\n%s", err, p.stderr.String())
	}
}
