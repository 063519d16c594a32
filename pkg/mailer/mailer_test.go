package mailer

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pacsflow/pacsflow/internal/smtptest"
)

func TestSend(t *testing.T) {
	tests := []struct {
		name      string
		code      int
		wantErr   bool
		permanent bool
	}{
		{"accepted", 250, false, false},
		{"try again later", 451, true, false},
		{"refused", 550, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := smtptest.Start(t, func(int) int { return tt.code })
			err := Send(context.Background(), Config{Addr: srv.Addr, From: "pacsflow <pacsflow@example.org>"}, Message{
				To: []string{"dr.house@example.org", "Triage Desk <triage@example.org>"}, Subject: "[pacsflow] STAT study – nodule",
				Body: "line 1\nline 2\n.leading dot", Headers: map[string]string{"Pacsflow-Delivery": "id/1\r\nBcc: evil@example.org"},
			})
			if (err != nil) != tt.wantErr || IsPermanent(err) != tt.permanent {
				t.Fatalf("Send: %v (permanent %v), want error %v permanent %v", err, IsPermanent(err), tt.wantErr, tt.permanent)
			}
			msgs := srv.Messages()
			if len(msgs) != 1 {
				t.Fatalf("%d messages", len(msgs))
			}
			m := msgs[0]
			if m.From != "pacsflow@example.org" || strings.Join(m.To, ",") != "dr.house@example.org,triage@example.org" {
				t.Errorf("envelope %s → %v", m.From, m.To)
			}
			// The server reads lines as the protocol defines them (CRLF),
			// and gives them back with LF.
			for _, want := range []string{
				"Subject: =?utf-8?q?[pacsflow]_STAT_study_=E2=80=93_nodule?=\n",
				"Content-Type: text/plain; charset=utf-8\n",
				"Pacsflow-Delivery: id/1  Bcc: evil@example.org\n", // the line break cannot add a field
				"\n\nline 1\nline 2\n.leading dot\n",
			} {
				if !strings.Contains(m.Data, want) {
					t.Errorf("message lacks %q:\n%s", want, m.Data)
				}
			}
		})
	}
}

func TestSendFailures(t *testing.T) {
	// A port nothing listens on: a closed listener's.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	// A server that accepts and never greets.
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		if c, err := mute.Accept(); err == nil {
			<-done
			c.Close()
		}
	}()
	tests := []struct {
		name      string
		cfg       Config
		to        []string
		permanent bool
		contains  string
	}{
		{"no server", Config{Addr: closed, From: "a@example.org"}, []string{"b@example.org"}, false, "connect"},
		{"silent server", Config{Addr: mute.Addr().String(), From: "a@example.org", Timeout: 200 * time.Millisecond}, []string{"b@example.org"}, false, "greeting"},
		{"bad sender", Config{Addr: closed, From: "not an address"}, []string{"b@example.org"}, true, "smtp from"},
		{"bad address", Config{Addr: "mail.example.org", From: "a@example.org"}, []string{"b@example.org"}, true, "host:port"},
		{"no recipient", Config{Addr: closed, From: "a@example.org"}, nil, true, "no recipient"},
		{"bad recipient", Config{Addr: closed, From: "a@example.org"}, []string{"b@"}, true, "recipient"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Send(context.Background(), tt.cfg, Message{To: tt.to, Subject: "s", Body: "b"})
			if err == nil || IsPermanent(err) != tt.permanent || !strings.Contains(err.Error(), tt.contains) {
				t.Errorf("Send: %v (permanent %v), want an error with %q, permanent %v", err, IsPermanent(err), tt.contains, tt.permanent)
			}
		})
	}
}
