package main_test

// End-to-end tests of the notify service: the worklist page in a real
// browser (Debian's chromium, driven by chromedp) while DCMTK's storescu
// sends studies to `pacsflow up` with the reference model.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/bcrypt"

	"github.com/pacsflow/pacsflow/pkg/synth"
	"github.com/pacsflow/pacsflow/pkg/webhook"
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
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
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
	dir, truth := writeSynth(t, bin, "--studies", "2", "--finding", "mixed", "--seed", "5", "--ct-slices", "0")
	negative, positive := truth.Studies[0], truth.Studies[1]
	if negative.HasFindings() || !positive.HasFindings() {
		t.Fatalf("synth --finding mixed: want the first study without a finding and the second with one")
	}
	filesOf := func(i int) []string {
		return filesOf(&synth.Truth{Studies: truth.Studies[i : i+1]}, dir)
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

// TestNotifyCommand: `pacsflow notify` on its own beside `pacsflow up`
// (which runs a notify service too): both serve the same worklist, and the
// standalone one posts the signed webhook of its rules for a STAT study.
func TestNotifyCommand(t *testing.T) {
	requireTools(t, "storescu")
	bin := buildPacsflow(t)
	dir, truth := writeSynth(t, bin, "--studies", "1", "--finding", "nodule", "--seed", "9", "--ct-slices", "0")
	study := truth.Studies[0].StudyInstanceUID

	const secret = "a-webhook-secret-for-the-test"
	deliveries := make(chan *http.Request, 4)
	bodies := make(chan []byte, 4)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := webhook.Verify(r.Header.Get(webhook.HeaderSignature), body, time.Now(), 5*time.Minute, []byte(secret)); err != nil {
			t.Errorf("webhook signature: %v", err)
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		deliveries <- r
		bodies <- body
	}))
	defer rcv.Close()
	cfgDir := t.TempDir()
	secretFile := filepath.Join(cfgDir, "secret")
	rules := filepath.Join(cfgDir, "rules.json")
	if err := os.WriteFile(secretFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rules, []byte(`{"webhooks": [{"name": "stat", "url": "`+rcv.URL+`/hook", "secret_file": "`+secretFile+`", "min_level": "STAT"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}

	up := startPipeline(t, bin, upArgs(t.TempDir(), "objectstore", "--model", referenceModel(t))...)
	nf := start(t, bin, "notify", "--nats-url", up.natsURL, "--http-addr", "127.0.0.1:0", "--notify-rules", rules)
	var notifyURL string
	waitFor(t, "pacsflow notify listening", func() bool {
		m := httpLineRE.FindStringSubmatch(nf.stdout.String())
		if m != nil {
			notifyURL = m[1]
		}
		return m != nil && strings.Contains(nf.stdout.String(), "1 webhook rule(s)")
	})

	storeSCU(t, up.dicomAddr, filesOf(truth, dir)).mustSucceed(t)
	select {
	case r := <-deliveries:
		var p struct {
			StudyInstanceUID string `json:"study_instance_uid"`
			Level            string `json:"level"`
			Patient          any    `json:"patient"`
			PHI              any    `json:"phi"`
		}
		if err := json.Unmarshal(<-bodies, &p); err != nil {
			t.Fatal(err)
		}
		if p.StudyInstanceUID != study || p.Level != "STAT" || p.PHI != nil || r.Header.Get(webhook.HeaderEvent) != "study.triaged" {
			t.Errorf("delivery %+v, event %s", p, r.Header.Get(webhook.HeaderEvent))
		}
	case <-time.After(eventTimeout):
		t.Fatalf("no webhook within %s\nnotify stderr:\n%s", eventTimeout, nf.stderr.String())
	}
	for _, base := range []string{up.httpURL, notifyURL} {
		waitFor(t, "the study triaged on "+base, func() bool {
			e := getWorklist(t, base, "", "")
			return len(e) == 1 && e[0].StudyInstanceUID == study && e[0].Level == "STAT" && !e[0].Pending
		})
	}
	if err := nf.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	nf.mustSucceed(t)
	up.interrupt(t)
	if n := len(deliveries); n != 0 {
		t.Errorf("%d more deliveries, want one in all", n)
	}
}

// filesOf lists the files of every study pacsflow synth wrote into dir.
func filesOf(truth *synth.Truth, dir string) []string {
	var out []string
	for _, s := range truth.Studies {
		for _, f := range s.Files {
			out = append(out, filepath.Join(dir, f.Path))
		}
	}
	return out
}
