package notify

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/pacsflow/pacsflow/schemas"
)

// specURL names the OpenAPI document as a schema resource: its schemas
// refer to each other as "#/components/schemas/...", relative to it.
const specURL = "urn:notify-openapi"

// spec is the notify API's OpenAPI description, read as a client reads it.
type spec struct {
	doc      map[string]any
	compiler *jsonschema.Compiler
}

func loadSpec(t *testing.T) *spec {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(schemas.NotifyOpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	// The schema library wants its own decoding of the document (numbers
	// as json.Number).
	res, err := jsonschema.UnmarshalJSON(bytes.NewReader(schemas.NotifyOpenAPI))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	// OpenAPI 3.1's schemas are JSON Schema 2020-12; date-time is part of
	// the contract, where 2020-12 would only annotate it.
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	if err := c.AddResource(specURL, res); err != nil {
		t.Fatal(err)
	}
	return &spec{doc: doc, compiler: c}
}

// httpMethods are the keys of an OpenAPI path item that are operations.
var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// operations returns "METHOD path" of every operation the spec describes.
func (s *spec) operations() []string {
	var out []string
	for path, item := range s.doc["paths"].(map[string]any) {
		for _, m := range httpMethods {
			if _, ok := item.(map[string]any)[m]; ok {
				out = append(out, strings.ToUpper(m)+" "+path)
			}
		}
	}
	slices.Sort(out)
	return out
}

// lookup follows keys from the spec's root, failing the test with the
// path it took when one is missing.
func (s *spec) lookup(t *testing.T, keys ...string) map[string]any {
	t.Helper()
	v := s.doc
	for i, k := range keys {
		next, ok := v[k].(map[string]any)
		if !ok {
			t.Fatalf("the spec has no %s", strings.Join(keys[:i+1], " → "))
		}
		v = next
	}
	return v
}

// pointer is the JSON pointer (RFC 6901) of keys.
func pointer(keys ...string) string {
	var b strings.Builder
	for _, k := range keys {
		b.WriteString("/" + strings.ReplaceAll(strings.ReplaceAll(k, "~", "~0"), "/", "~1"))
	}
	return b.String()
}

// schemaAt compiles the schema found at keys: the one its $ref names, or
// the inline one itself.
func (s *spec) schemaAt(t *testing.T, keys ...string) *jsonschema.Schema {
	t.Helper()
	sch := s.lookup(t, keys...)
	loc := specURL + "#" + pointer(keys...)
	if ref, ok := sch["$ref"].(string); ok {
		if !strings.HasPrefix(ref, "#/") {
			t.Fatalf("%s: $ref %s outside the document", pointer(keys...), ref)
		}
		loc = specURL + ref
	}
	c, err := s.compiler.Compile(loc)
	if err != nil {
		t.Fatalf("compile %s: %v", loc, err)
	}
	return c
}

// response returns the schema the spec gives for an operation's answer
// with status and content type, failing the test when it gives none.
func (s *spec) response(t *testing.T, method, path string, status int, contentType string) *jsonschema.Schema {
	t.Helper()
	return s.schemaAt(t, "paths", path, strings.ToLower(method), "responses", strconv.Itoa(status), "content", contentType, "schema")
}

// validate checks a JSON body against a schema.
func validate(sch *jsonschema.Schema, body []byte) error {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	return sch.Validate(v)
}

// The spec describes exactly the routes the service serves, with the
// path parameters their patterns name.
func TestOpenAPIRoutes(t *testing.T) {
	s := loadSpec(t)
	var served []string
	for _, r := range apiRoutes {
		served = append(served, r.method+" "+r.path)
	}
	slices.Sort(served)
	if got := s.operations(); !slices.Equal(got, served) {
		t.Errorf("the spec describes\n\t%s\nthe service serves\n\t%s", strings.Join(got, "\n\t"), strings.Join(served, "\n\t"))
	}
	for _, op := range s.operations() {
		method, path, _ := strings.Cut(op, " ")
		o := s.lookup(t, "paths", path, strings.ToLower(method))
		var declared []string
		params, _ := o["parameters"].([]any)
		for _, p := range params {
			if p := p.(map[string]any); p["in"] == "path" {
				declared = append(declared, p["name"].(string))
				if p["required"] != true {
					t.Errorf("%s: path parameter %s not required", op, p["name"])
				}
			}
		}
		var named []string
		for _, part := range strings.Split(path, "/") {
			if name, ok := strings.CutPrefix(part, "{"); ok {
				named = append(named, strings.TrimSuffix(name, "}"))
			}
		}
		if !slices.Equal(declared, named) {
			t.Errorf("%s: path parameters %v, the path names %v", op, declared, named)
		}
	}
}

// Real answers of the service, in every state a study can be in, match
// the schemas the spec gives for them; every operation is checked.
func TestOpenAPIResponses(t *testing.T) {
	sp := loadSpec(t)
	rcv := newReceiver(t, secretOf("oncall"), nil)
	f := newWebhookFixture(t, webhookConfig(3, rule(t, Rule{Name: "oncall"}, rcv)))
	now := time.Now().UTC()
	pending := f.newStudy(2, "HIGH", now.Add(-time.Hour))
	triaged := f.newStudy(2, "", now.Add(-30*time.Minute))
	resultsOnly := f.newStudy(1, "", now.Add(-10*time.Minute))
	f.publishAll(pending.received(1), triaged.received(1))
	f.waitEntry(triaged.uid, "listed", func(e *Entry) bool { return e.Generation == 1 })
	f.publishAll(triaged.results(1, "STAT", 0.93)...)
	// A study whose results came before its study event: no patient, no
	// called AE yet.
	f.publishAll(resultsOnly.results(1, "ROUTINE", 0.1)[0], resultsOnly.results(1, "ROUTINE", 0.1)[2])
	f.waitEntry(pending.uid, "listed", func(*Entry) bool { return true })
	f.waitEntry(triaged.uid, "triaged", func(e *Entry) bool { return !e.Pending && e.AI.ReportGeneration == 1 && e.AI.FindingsGeneration == 1 })
	f.waitEntry(resultsOnly.uid, "triaged", func(e *Entry) bool { return !e.Pending && e.AI.FindingsGeneration == 1 })
	waitFor(t, "the delivery logged", func() bool {
		d := f.deliveries("")
		return len(d) == 1 && d[0].State == DeliveryDelivered
	})

	checked := map[string]bool{} // "METHOD path" answered 2xx and checked
	call := func(method, path, url, body string, want int) []byte {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, f.http.URL+url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d %s, want %d", method, url, resp.StatusCode, b, want)
		}
		ct, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		if err != nil {
			t.Fatalf("%s %s: content type: %v", method, url, err)
		}
		sch := sp.response(t, method, path, want, ct)
		if ct == "application/json" {
			if err := validate(sch, b); err != nil {
				t.Errorf("%s %s → %d does not match the spec: %v\n%s", method, url, want, err, b)
			}
		}
		if want < 300 {
			checked[method+" "+path] = true
		}
		return b
	}

	const (
		list    = "/api/v1/worklist"
		detail  = "/api/v1/studies/{uid}"
		preview = "/api/v1/studies/{uid}/preview"
		status  = "/api/v1/studies/{uid}/status"
	)
	page := call("GET", list, list, "", http.StatusOK)
	var p worklistPage
	if err := json.Unmarshal(page, &p); err != nil || p.Total != 3 {
		t.Fatalf("worklist %s: %v", page, err)
	}
	call("GET", list, list+"?level=STAT&status=new&modality=CR&q=doe&limit=1&offset=0", "", http.StatusOK)
	call("GET", list, list+"?status=read", "", http.StatusBadRequest)
	call("GET", list, list+"?limit=0", "", http.StatusBadRequest)
	for _, s := range []*study{pending, triaged, resultsOnly} {
		call("GET", detail, "/api/v1/studies/"+s.uid, "", http.StatusOK)
	}
	call("GET", detail, "/api/v1/studies/1.2.3", "", http.StatusNotFound)

	change := `{"status":"in_review","by":"dr.who"}`
	if err := validate(sp.schemaAt(t, "paths", status, "put", "requestBody", "content", "application/json", "schema"), []byte(change)); err != nil {
		t.Errorf("the request body does not match the spec: %v", err)
	}
	call("PUT", status, "/api/v1/studies/"+triaged.uid+"/status", change, http.StatusOK)
	call("PUT", status, "/api/v1/studies/"+resultsOnly.uid+"/status", `{"status":"done","by":"dr.who"}`, http.StatusOK)
	call("PUT", status, "/api/v1/studies/"+triaged.uid+"/status", `{"status":"read","by":"dr.who"}`, http.StatusBadRequest)
	call("PUT", status, "/api/v1/studies/"+triaged.uid+"/status", `{"status":"done","by":"dr.who","note":"x"}`, http.StatusBadRequest)
	call("PUT", status, "/api/v1/studies/1.2.3/status", change, http.StatusNotFound)
	f.waitEntry(triaged.uid, "in review", func(e *Entry) bool { return e.Status == StatusInReview })
	call("GET", detail, "/api/v1/studies/"+triaged.uid, "", http.StatusOK)
	call("GET", list, list, "", http.StatusOK)

	call("GET", "/api/v1/deliveries", "/api/v1/deliveries", "", http.StatusOK)
	call("GET", "/api/v1/deliveries", "/api/v1/deliveries?state=failed", "", http.StatusOK)
	call("GET", "/api/v1/deliveries", "/api/v1/deliveries?state=lost", "", http.StatusBadRequest)

	// The preview answers a PNG, as the spec's content type says.
	png := call("GET", preview, "/api/v1/studies/"+triaged.uid+"/preview", "", http.StatusOK)
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("preview is not a PNG: % x", png[:min(8, len(png))])
	}
	call("GET", preview, "/api/v1/studies/"+pending.uid+"/preview?sop=1.2.3", "", http.StatusNotFound)
	call("GET", preview, "/api/v1/studies/1.2.3/preview", "", http.StatusNotFound)

	if b := call("GET", "/api/v1/openapi.json", "/api/v1/openapi.json", "", http.StatusOK); !bytes.Equal(b, schemas.NotifyOpenAPI) {
		t.Error("the service serves another description than schemas/notify.openapi.json")
	}
	checkStream(t, sp, f.http.URL)
	checked["GET /api/v1/stream"] = true

	t.Run("unauthorized", func(t *testing.T) {
		a := newFixture(t, Config{Auth: &Auth{Token: "a-long-random-api-token"}})
		for _, op := range sp.operations() {
			method, path, _ := strings.Cut(op, " ")
			url := strings.ReplaceAll(path, "{uid}", pending.uid)
			req, err := http.NewRequestWithContext(t.Context(), method, a.http.URL+url, strings.NewReader(change))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s: %d, want 401", op, resp.StatusCode)
				continue
			}
			if err := validate(sp.response(t, method, path, http.StatusUnauthorized, "application/json"), b); err != nil {
				t.Errorf("%s → 401 does not match the spec: %v", op, err)
			}
		}
	})

	if got, want := slices.Sorted(maps.Keys(checked)), sp.operations(); !slices.Equal(got, want) {
		t.Errorf("operations answered and checked %v, want every one of %v", got, want)
	}

	// The schemas close every object (additionalProperties: false): a
	// field a handler adds without the spec fails the checks above.
	t.Run("detects drift", func(t *testing.T) {
		sch := sp.response(t, "GET", list, http.StatusOK, "application/json")
		mutations := []struct {
			name   string
			mutate func(p map[string]any)
		}{
			{"an entry with a field the spec lacks", func(p map[string]any) { entry(p, 0)["priority_note"] = "x" }},
			{"a model result with a field the spec lacks", func(p map[string]any) { ai(p)["confidence"] = 0.5 }},
			{"a finding with a field the spec lacks", func(p map[string]any) { ai(p)["findings"].([]any)[0].(map[string]any)["area"] = 3 }},
			{"a page with a field the spec lacks", func(p map[string]any) { p["next"] = "x" }},
			{"an entry without its status", func(p map[string]any) { delete(entry(p, 0), "status") }},
			{"an unknown level", func(p map[string]any) { entry(p, 0)["level"] = "CRITICAL" }},
			{"a time that is not one", func(p map[string]any) { entry(p, 0)["updated_at"] = "yesterday" }},
			{"modalities null", func(p map[string]any) { entry(p, 0)["modalities"] = nil }},
		}
		for _, m := range mutations {
			t.Run(m.name, func(t *testing.T) {
				var p map[string]any
				if err := json.Unmarshal(page, &p); err != nil {
					t.Fatal(err)
				}
				m.mutate(p)
				b, err := json.Marshal(p)
				if err != nil {
					t.Fatal(err)
				}
				var ve *jsonschema.ValidationError
				if err := validate(sch, b); !errors.As(err, &ve) {
					t.Errorf("validation: %v, want a violation", err)
				}
			})
		}
	})
}

// entry is the page's ith entry, ai the first entry's model result (the
// STAT study is first).
func entry(p map[string]any, i int) map[string]any {
	return p["entries"].([]any)[i].(map[string]any)
}

func ai(p map[string]any) map[string]any { return entry(p, 0)["ai"].(map[string]any) }

// checkStream opens the live stream and checks its content type against
// the spec, and that it starts as Server-Sent Events do.
func checkStream(t *testing.T, sp *spec, base string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, base+"/api/v1/stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: %d", resp.StatusCode)
	}
	sp.response(t, http.MethodGet, "/api/v1/stream", http.StatusOK, ct)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "retry: ") {
		t.Errorf("stream starts %q: %v", line, err)
	}
}
