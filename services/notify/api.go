package notify

import (
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pacsflow/pacsflow/schemas"
)

// apiRoutes are the JSON API's routes, as schemas/notify.openapi.json
// describes them (a test holds the two together).
var apiRoutes = []struct {
	method, path string
	handle       func(*Service, http.ResponseWriter, *http.Request)
}{
	{"GET", "/api/v1/worklist", (*Service).list},
	{"GET", "/api/v1/studies/{uid}", (*Service).study},
	{"GET", "/api/v1/studies/{uid}/preview", (*Service).preview},
	{"PUT", "/api/v1/studies/{uid}/status", (*Service).setStatus},
	{"GET", "/api/v1/stream", (*Service).stream},
	{"GET", "/api/v1/deliveries", (*Service).listDeliveries},
	{"GET", "/api/v1/openapi.json", (*Service).openAPI},
}

//go:embed web
var web embed.FS

// Routes adds the worklist page (/) with its assets (/ui/) and the JSON
// API (/api/v1/) to mux, all behind the configured credential.
func (s *Service) Routes(mux *http.ServeMux) {
	for _, r := range apiRoutes {
		h := func(w http.ResponseWriter, req *http.Request) { r.handle(s, w, req) }
		mux.Handle(r.method+" "+r.path, s.cfg.Auth.require(s.timed(r.path, h)))
	}
	assets, err := fs.Sub(web, "web")
	if err != nil {
		panic(err) // the embedded folder is part of the binary
	}
	mux.Handle("GET /ui/", s.cfg.Auth.require(pageHeaders(http.StripPrefix("/ui/", http.FileServerFS(assets)))))
	mux.Handle("GET /{$}", s.cfg.Auth.require(pageHeaders(s.timed("/", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, assets, "index.html")
	}))))
}

// pageHeaders keeps the page to its own origin: it loads nothing from
// elsewhere, runs no inline script, cannot be framed, and sends no
// referrer (its URLs hold Study Instance UIDs).
func pageHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		h.ServeHTTP(w, r)
	})
}

func (s *Service) timed(route string, h http.HandlerFunc) http.HandlerFunc {
	obs := s.m.requests.WithLabelValues(route)
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h(w, r)
		obs.Observe(time.Since(start).Seconds())
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// loading answers 503 until the worklist is loaded, so that an empty list
// is never shown for a full one.
func (s *Service) loading(w http.ResponseWriter) bool {
	if s.view.loaded() {
		return false
	}
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusServiceUnavailable, "the worklist is loading")
	return true
}

// Page sizes of the list.
const (
	defaultLimit = 200
	maxLimit     = 1000
)

// worklistPage is the answer of GET /api/v1/worklist.
type worklistPage struct {
	Total   int       `json:"total"`
	Offset  int       `json:"offset"`
	AsOf    time.Time `json:"as_of"`
	Entries []*Entry  `json:"entries"`
}

func (s *Service) list(w http.ResponseWriter, r *http.Request) {
	if s.loading(w) {
		return
	}
	q := r.URL.Query()
	f := Filter{Levels: csv(q.Get("level")), Statuses: csv(q.Get("status")), Modalities: csv(q.Get("modality")), Text: strings.TrimSpace(q.Get("q"))}
	for _, st := range f.Statuses {
		if !validStatus(st) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("status %q: want new, in_review or done", st))
			return
		}
	}
	offset, err1 := intParam(q.Get("offset"), 0)
	limit, err2 := intParam(q.Get("limit"), defaultLimit)
	if err := errors.Join(err1, err2); err != nil || offset < 0 || limit < 1 || limit > maxLimit {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("offset ≥ 0 and limit 1 to %d, integers", maxLimit))
		return
	}
	entries, total := s.view.list(f, offset, limit)
	writeJSON(w, http.StatusOK, worklistPage{Total: total, Offset: offset, AsOf: s.cfg.now().UTC(), Entries: entries})
}

func csv(s string) []string {
	var out []string
	for v := range strings.SplitSeq(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func intParam(s string, def int) (int, error) {
	if s == "" {
		return def, nil
	}
	return strconv.Atoi(s)
}

// studyDetail is the answer of GET /api/v1/studies/{uid}.
type studyDetail struct {
	Entry     *Entry         `json:"entry"`
	Series    []seriesDetail `json:"series"`
	Truncated bool           `json:"instances_truncated"`
}

type seriesDetail struct {
	SeriesInstanceUID string           `json:"series_instance_uid"`
	SeriesNumber      int              `json:"series_number,omitempty"`
	Modality          string           `json:"modality,omitempty"`
	Description       string           `json:"description,omitempty"`
	Instances         []instanceDetail `json:"instances"`
}

type instanceDetail struct {
	SOPInstanceUID string `json:"sop_instance_uid"`
	InstanceNumber int    `json:"instance_number,omitempty"`
	Frames         int    `json:"frames,omitempty"`
}

func (s *Service) study(w http.ResponseWriter, r *http.Request) {
	e, list, ok := s.studyOf(w, r)
	if !ok {
		return
	}
	d := studyDetail{Entry: e, Series: []seriesDetail{}}
	if list != nil {
		d.Truncated = list.Truncated
		for _, se := range list.Series {
			sd := seriesDetail{SeriesInstanceUID: se.SeriesInstanceUID, SeriesNumber: se.SeriesNumber, Modality: se.Modality,
				Description: se.Description, Instances: make([]instanceDetail, len(se.Instances))}
			for i, in := range se.Instances {
				sd.Instances[i] = instanceDetail{SOPInstanceUID: in.SOPInstanceUID, InstanceNumber: in.InstanceNumber, Frames: in.Frames}
			}
			d.Series = append(d.Series, sd)
		}
	}
	writeJSON(w, http.StatusOK, d)
}

// studyOf finds the entry and the instance list of the request's study
// ({uid}); it answers the request itself when it cannot (loading, not
// listed, store away), and then returns false.
func (s *Service) studyOf(w http.ResponseWriter, r *http.Request) (*Entry, *studyInstances, bool) {
	if s.loading(w) {
		return nil, nil, false
	}
	uid := r.PathValue("uid")
	e := s.view.get(uid)
	if e == nil {
		writeError(w, http.StatusNotFound, "no study "+uid+" on the worklist")
		return nil, nil, false
	}
	list, _, err := get[studyInstances](r.Context(), s.instances, uid)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return nil, nil, false
	}
	return e, list, true
}

// statusChange is the body of PUT /api/v1/studies/{uid}/status.
type statusChange struct {
	Status string `json:"status"`
	// By names the reader; an authenticated user's name takes its place.
	By string `json:"by"`
}

func (s *Service) setStatus(w http.ResponseWriter, r *http.Request) {
	uid := r.PathValue("uid")
	var req statusChange
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "want a JSON body {\"status\": \"new|in_review|done\", \"by\": \"name\"}: "+err.Error())
		return
	}
	if !validStatus(req.Status) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("status %q: want new, in_review or done", req.Status))
		return
	}
	by := strings.TrimSpace(req.By)
	if who := s.cfg.Auth.who(r); who != "" && who != "token" {
		by = who
	}
	if by == "" || len(by) > 128 {
		writeError(w, http.StatusBadRequest, "by: name the reader (1 to 128 characters)")
		return
	}
	e, err := s.changeStatus(r.Context(), uid, req.Status, by)
	switch {
	case errors.Is(err, errNotListed):
		writeError(w, http.StatusNotFound, "no study "+uid+" on the worklist")
	case err != nil:
		s.log.Error("status change", "study", uid, "err", err)
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		writeJSON(w, http.StatusOK, e)
	}
}

func (s *Service) openAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(schemas.NotifyOpenAPI) // the client went away
}
