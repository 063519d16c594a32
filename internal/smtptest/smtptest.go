// Package smtptest is an SMTP server for tests: it accepts messages on
// loopback, keeps them, and answers the end of each message with the code
// the test chooses (to test retries and refusals).
package smtptest

import (
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"
)

// Message is a message the server took or refused.
type Message struct {
	From string
	To   []string
	// Data is the message as sent (header and body), dot-unstuffed.
	Data string
	// Code is what the server answered to it.
	Code int
}

// Server is a running test server.
type Server struct {
	Addr   string
	answer func(n int) int
	mu     sync.Mutex
	msgs   []Message
}

// Start runs a server until the test ends. answer gives the reply code to
// the nth message (1-based): 250 takes it; nil takes every message.
func Start(t testing.TB, answer func(n int) int) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: ln.Addr().String(), answer: answer}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { s.serve(conn) })
		}
	})
	return s
}

// Messages returns the messages received so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

func (s *Server) serve(conn net.Conn) {
	defer conn.Close()
	tp := textproto.NewConn(conn)
	reply := func(format string, args ...any) bool { return tp.PrintfLine(format, args...) == nil }
	if !reply("220 smtptest ESMTP") {
		return
	}
	var m Message
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		ok := true
		switch strings.ToUpper(verb) {
		case "EHLO", "HELO":
			ok = reply("250-smtptest\r\n250 8BITMIME")
		case "MAIL":
			m = Message{From: address(arg)}
			ok = reply("250 ok")
		case "RCPT":
			m.To = append(m.To, address(arg))
			ok = reply("250 ok")
		case "DATA":
			if !reply("354 go ahead") {
				return
			}
			b, err := tp.ReadDotBytes()
			if err != nil {
				return
			}
			m.Data = string(b)
			s.mu.Lock()
			m.Code = 250
			if s.answer != nil {
				m.Code = s.answer(len(s.msgs) + 1)
			}
			s.msgs = append(s.msgs, m)
			s.mu.Unlock()
			ok = reply("%d %s", m.Code, text(m.Code))
		case "RSET", "NOOP":
			ok = reply("250 ok")
		case "QUIT":
			reply("221 bye")
			return
		default:
			ok = reply("502 not implemented")
		}
		if !ok {
			return
		}
	}
}

func address(arg string) string {
	_, a, _ := strings.Cut(arg, ":")
	return strings.Trim(strings.Fields(a + " ")[0], "<>")
}

func text(code int) string {
	switch {
	case code < 300:
		return "ok"
	case code < 500:
		return "try again later"
	}
	return fmt.Sprintf("refused (%d)", code)
}
