package understand

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/model"
)

// maxQuestion bounds a question's length: the model reads a few words.
const maxQuestion = 1000

// askTimeout bounds the work for one question.
const askTimeout = 30 * time.Second

// serveAsk starts the ai.ask service (a NATS micro service, so that
// `nats micro` lists it with its statistics); the caller stops it.
func (s *Service) serveAsk(ctx context.Context) (micro.Service, error) {
	if !s.contract.Has(model.SigAsk) {
		s.log.Info("the model has no ask signature: ai.ask is not served")
		return nil, nil
	}
	svc, err := micro.AddService(s.js.Conn(), micro.Config{
		Name:        "pacsflow-ai",
		Version:     "1.0.0",
		Description: "Answers questions about analyzed studies with the model's ask signature (machine-generated, not reviewed)",
		Endpoint: &micro.EndpointConfig{
			Subject: events.SubjectAIAsk,
			Handler: micro.ContextHandler(ctx, s.answer),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("understand: serve %s: %w", events.SubjectAIAsk, err)
	}
	return svc, nil
}

// answer handles one ai.ask request. Error codes follow HTTP's: 400 for a
// bad request, 404 for a study without analysis, 500 for a failure.
func (s *Service) answer(ctx context.Context, req micro.Request) {
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	reply, code, err := s.ask(ctx, req.Data())
	outcome := map[string]string{"": "answered", "400": "bad_request", "404": "not_found", "500": "failed"}[code]
	s.m.asks.WithLabelValues(outcome).Inc()
	if err != nil {
		if code == "500" {
			s.log.Error("ai.ask failed", "err", err)
		}
		_ = req.Error(code, err.Error(), nil) // the requester times out if the reply is lost
		return
	}
	_ = req.RespondJSON(reply)
}

func (s *Service) ask(ctx context.Context, data []byte) (*events.AskReply, string, error) {
	var q events.AskRequest
	if err := json.Unmarshal(data, &q); err != nil {
		return nil, "400", fmt.Errorf("request: %w", err)
	}
	q.Question = strings.TrimSpace(q.Question)
	if q.StudyInstanceUID == "" || q.Question == "" || len(q.Question) > maxQuestion {
		return nil, "400", fmt.Errorf("request: want a study_instance_uid and a question of 1 to %d bytes", maxQuestion)
	}
	rec, _, err := s.load(ctx, s.recordKey(q.StudyInstanceUID))
	if err != nil {
		return nil, "500", err
	}
	if rec == nil {
		return nil, "404", fmt.Errorf("study %s has not been analyzed by %s %s", q.StudyInstanceUID, s.ref.Name, s.ref.Version)
	}
	if rec.KeyImage == nil {
		return nil, "404", fmt.Errorf("the model analyzed no image of study %s", q.StudyInstanceUID)
	}
	k := rec.KeyImage
	img, _, skip, err := s.prepare(ctx, events.InstanceRef{SOPInstanceUID: k.SOPInstanceUID, Object: k.Object})
	if err == nil && skip != "" {
		err = errors.New(skip)
	}
	if err != nil {
		return nil, "500", fmt.Errorf("key image %s of study %s: %w", k.SOPInstanceUID, q.StudyInstanceUID, err)
	}
	answers, err := s.cfg.Model.Ask(ctx, []model.Image{img}, []string{q.Question})
	if err != nil {
		return nil, "500", fmt.Errorf("ask about study %s: %w", q.StudyInstanceUID, err)
	}
	return &events.AskReply{
		StudyInstanceUID: q.StudyInstanceUID, Generation: rec.Generation, SOPInstanceUID: k.SOPInstanceUID, Frame: k.Frame,
		Question: q.Question, Answer: answers[0], MachineGenerated: true, Model: s.ref,
	}, "", nil
}
