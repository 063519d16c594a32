package main

import (
	"flag"
	"fmt"
	"net"

	"github.com/pacsflow/pacsflow/pkg/dimse"
)

// clientFlags are the flags of every command that opens associations.
type clientFlags struct {
	addr, calledAE, callingAE             *string
	tls                                   *bool
	tlsCA, tlsCert, tlsKey, tlsServerName *string
	maxPDU                                *uint
}

func addClientFlags(fs *flag.FlagSet) *clientFlags {
	return &clientFlags{
		addr:          fs.String("addr", "127.0.0.1:11112", "peer address HOST:PORT"),
		calledAE:      fs.String("called-ae", "PACSFLOW", "the peer's AE title"),
		callingAE:     fs.String("calling-ae", "PACSFLOW-SCU", "this side's AE title"),
		tls:           fs.Bool("tls", false, "use DICOM TLS (TLS 1.2+)"),
		tlsCA:         fs.String("tls-ca", "", "CA certificates to verify the peer with (PEM; default: system roots)"),
		tlsCert:       fs.String("tls-cert", "", "client certificate (PEM), if the peer requires one"),
		tlsKey:        fs.String("tls-key", "", "client private key (PEM)"),
		tlsServerName: fs.String("tls-server-name", "", "name to verify the peer's certificate against (default: the host of --addr)"),
		maxPDU:        fs.Uint("max-pdu", 256<<10, "maximum P-DATA-TF length advertised and accepted, bytes"),
	}
}

func (f *clientFlags) config() (dimse.ClientConfig, error) {
	cfg := dimse.ClientConfig{CallingAE: *f.callingAE, CalledAE: *f.calledAE}
	cfg.UL.MaxPDataLength = uint32(*f.maxPDU)
	cfg.UL.MaxSendPDataLength = 1 << 20
	if *f.tls {
		name := *f.tlsServerName
		if name == "" {
			host, _, err := net.SplitHostPort(*f.addr)
			if err != nil {
				return cfg, fmt.Errorf("--addr %q: %w", *f.addr, err)
			}
			name = host
		}
		tc, err := dimse.ClientTLSConfig(*f.tlsCA, *f.tlsCert, *f.tlsKey, name)
		if err != nil {
			return cfg, err
		}
		cfg.TLS = tc
	}
	return cfg, cfg.Validate()
}
