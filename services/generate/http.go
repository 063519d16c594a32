package generate

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"

	"github.com/pacsflow/pacsflow/pkg/dicommeta"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/genimage"
	"github.com/pacsflow/pacsflow/pkg/storage"
)

// maxRequestBody bounds the body of a request over HTTP.
const maxRequestBody = 64 << 10

// Routes adds the service's HTTP endpoints to mux:
//
//	POST /v1/augmentations   a request, as JSON {study_instance_uid, sop_instance_uid, task,
//	                         prompt, count, seed}: 202 with {"request_id"}, 400 if invalid
//	GET  /v1/preview?key=K   the generated object under storage key K (as listed by
//	                         ai.augmentation.generated) as an 8-bit PNG; 404 for any other
//	                         object, so that no clinical image leaves through it
func (s *Service) Routes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/augmentations", s.postRequest)
	mux.HandleFunc("GET /v1/preview", s.preview)
}

func (s *Service) postRequest(w http.ResponseWriter, r *http.Request) {
	var req events.AugmentationRequested
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		http.Error(w, "request: "+err.Error(), http.StatusBadRequest)
		return
	}
	if req.Count == 0 {
		req.Count = 1
	}
	e := NewRequest("http", &req)
	if err := s.check(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if _, err := s.pub.Publish(r.Context(), e); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_ = json.NewEncoder(w).Encode(map[string]string{"request_id": req.RequestID}) // the client went away
}

func (s *Service) preview(w http.ResponseWriter, r *http.Request) {
	key := r.URL.Query().Get("key")
	if key == "" || strings.Contains(key, "..") {
		http.Error(w, "want ?key=<object key of a generated image>", http.StatusBadRequest)
		return
	}
	b, err := storage.ReadAll(r.Context(), s.cfg.Store, key, 0)
	if err != nil {
		http.Error(w, "no such generated image", http.StatusNotFound)
		return
	}
	if m, err := dicommeta.Parse(b, true); err != nil || m.Synthetic() == "" {
		http.Error(w, "no such generated image", http.StatusNotFound)
		return
	}
	png, err := genimage.PNG(b)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "image/png")
	_, _ = w.Write(png) // the client went away
}
