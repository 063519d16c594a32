package notify

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// keepAlive is how often an idle live stream sends a comment, so that
// proxies keep the connection open and a dead client is noticed.
const keepAlive = 15 * time.Second

// stream serves the worklist's changes as Server-Sent Events: "entry" with
// an entry that is new or changed, "removed" with the Study Instance UID
// of one that left. A client reads the list after it connects (the page
// does on every reconnection) and keeps, per study, the higher revision.
func (s *Service) stream(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	updates, cancel := s.view.subscribe()
	defer cancel()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no") // nginx: pass events on at once
	w.WriteHeader(http.StatusOK)
	// The client's retry delay, then a first comment so that it knows it
	// is connected.
	fmt.Fprint(w, "retry: 2000\n: connected\n\n")
	if rc.Flush() != nil {
		return
	}
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.done:
			return
		case <-tick.C:
			fmt.Fprint(w, ": keep-alive\n\n")
		case u, ok := <-updates:
			if !ok {
				return // fell behind: the client reconnects and reads the list again
			}
			if err := writeUpdate(w, u); err != nil {
				return
			}
		}
		if rc.Flush() != nil {
			return
		}
	}
}

func writeUpdate(w http.ResponseWriter, u update) error {
	if u.entry == nil {
		b, _ := json.Marshal(map[string]string{"study_instance_uid": u.removed})
		_, err := fmt.Fprintf(w, "event: removed\ndata: %s\n\n", b)
		return err
	}
	b, err := json.Marshal(u.entry)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "event: entry\nid: %d\ndata: %s\n\n", u.entry.Revision, b)
	return err
}
