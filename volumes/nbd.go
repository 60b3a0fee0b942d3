package volumes

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
)

// NBD protocol constants (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md).
const (
	nbdMagic        = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic     = 0x49484156454F5054 // "IHAVEOPT"
	nbdRepMagic     = 0x0003e889045565a9
	nbdRequestMagic = 0x25609513
	nbdReplyMagic   = 0x67446698

	nbdFlagFixedNewstyle = 1 << 0
	nbdFlagNoZeroes      = 1 << 1

	nbdOptExportName = 1
	nbdOptAbort      = 2
	nbdOptList       = 3
	nbdOptInfo       = 6
	nbdOptGo         = 7

	nbdRepAck      = 1
	nbdRepServer   = 2
	nbdRepInfo     = 3
	nbdRepErrUnsup = 1<<31 + 1

	nbdInfoExport = 0

	nbdFlagHasFlags  = 1 << 0
	nbdFlagSendFlush = 1 << 2
	nbdFlagSendFUA   = 1 << 3

	nbdCmdRead    = 0
	nbdCmdWrite   = 1
	nbdCmdDisc    = 2
	nbdCmdFlush   = 3
	nbdCmdFlagFUA = 1 << 0

	nbdEIO       = 5
	nbdEINVAL    = 22
	nbdENOSPC    = 28
	nbdESHUTDOWN = 108

	// nbdMaxRequest bounds one read or write (qemu sends at most 32 MiB).
	nbdMaxRequest = 32 << 20
)

// nbdServer serves one Device over NBD (fixed newstyle handshake, any
// export name, simple replies, requests handled in order) to clients of a
// listener, e.g. qemu's `-drive driver=nbd,server.type=unix,server.path=…`.
// An I/O error of the device is sent to the client as an NBD error: EIO,
// ENOSPC, or ESHUTDOWN when the node's Ceph client was blocklisted.
type nbdServer struct {
	dev Device
	ln  net.Listener
	log *slog.Logger
	wg  sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]bool // guarded by mu
	closed bool              // guarded by mu
}

// serveNBD starts serving dev on ln; Close stops it.
func serveNBD(ln net.Listener, dev Device, log *slog.Logger) *nbdServer {
	s := &nbdServer{dev: dev, ln: ln, log: log, conns: map[net.Conn]bool{}}
	s.wg.Add(1)
	go s.accept()
	return s
}

func (s *nbdServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // closed
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.serve(c); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Warn("NBD client failed", "err", err)
			}
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Close stops accepting, disconnects every client and waits for the
// goroutines to end.
func (s *nbdServer) Close() error {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	err := s.ln.Close()
	s.wg.Wait()
	return err
}

func (s *nbdServer) serve(c net.Conn) error {
	be := binary.BigEndian
	size, err := s.dev.Size()
	if err != nil {
		return fmt.Errorf("device size: %w", err)
	}
	hello := make([]byte, 18)
	be.PutUint64(hello[0:], nbdMagic)
	be.PutUint64(hello[8:], nbdOptMagic)
	be.PutUint16(hello[16:], nbdFlagFixedNewstyle|nbdFlagNoZeroes)
	if _, err := c.Write(hello); err != nil {
		return err
	}
	var cflags uint32
	if err := binary.Read(c, be, &cflags); err != nil {
		return err
	}
	const tflags = nbdFlagHasFlags | nbdFlagSendFlush | nbdFlagSendFUA
	reply := func(opt, typ uint32, data []byte) error {
		h := make([]byte, 20, 20+len(data))
		be.PutUint64(h[0:], nbdRepMagic)
		be.PutUint32(h[8:], opt)
		be.PutUint32(h[12:], typ)
		be.PutUint32(h[16:], uint32(len(data)))
		_, err := c.Write(append(h, data...))
		return err
	}
	// Option haggling.
	for {
		var h struct {
			Magic uint64
			Opt   uint32
			Len   uint32
		}
		if err := binary.Read(c, be, &h); err != nil {
			return err
		}
		if h.Magic != nbdOptMagic || h.Len > 4096 {
			return fmt.Errorf("bad option header %+v", h)
		}
		data := make([]byte, h.Len)
		if _, err := io.ReadFull(c, data); err != nil {
			return err
		}
		switch h.Opt {
		case nbdOptExportName:
			out := make([]byte, 10, 10+124)
			be.PutUint64(out[0:], size)
			be.PutUint16(out[8:], tflags)
			if cflags&nbdFlagNoZeroes == 0 {
				out = append(out, make([]byte, 124)...)
			}
			if _, err := c.Write(out); err != nil {
				return err
			}
			return s.transmit(c, size)
		case nbdOptInfo, nbdOptGo:
			info := make([]byte, 12)
			be.PutUint16(info[0:], nbdInfoExport)
			be.PutUint64(info[2:], size)
			be.PutUint16(info[10:], tflags)
			if err := reply(h.Opt, nbdRepInfo, info); err != nil {
				return err
			}
			if err := reply(h.Opt, nbdRepAck, nil); err != nil {
				return err
			}
			if h.Opt == nbdOptGo {
				return s.transmit(c, size)
			}
		case nbdOptList:
			if err := reply(h.Opt, nbdRepServer, make([]byte, 4)); err != nil { // one export, name ""
				return err
			}
			if err := reply(h.Opt, nbdRepAck, nil); err != nil {
				return err
			}
		case nbdOptAbort:
			_ = reply(h.Opt, nbdRepAck, nil)
			return nil
		default:
			if err := reply(h.Opt, nbdRepErrUnsup, nil); err != nil {
				return err
			}
		}
	}
}

// transmit handles requests until the client disconnects.
func (s *nbdServer) transmit(c net.Conn, size uint64) error {
	be := binary.BigEndian
	hdr := make([]byte, 28)
	var buf []byte
	for {
		if _, err := io.ReadFull(c, hdr); err != nil {
			return err
		}
		if be.Uint32(hdr[0:]) != nbdRequestMagic {
			return fmt.Errorf("bad request magic %#x", be.Uint32(hdr[0:]))
		}
		flags, typ := be.Uint16(hdr[4:]), be.Uint16(hdr[6:])
		handle, off, n := be.Uint64(hdr[8:]), be.Uint64(hdr[16:]), be.Uint32(hdr[24:])
		if typ == nbdCmdDisc {
			return nil
		}
		if (typ == nbdCmdRead || typ == nbdCmdWrite) && n > nbdMaxRequest {
			return fmt.Errorf("request of %d bytes is larger than %d", n, nbdMaxRequest)
		}
		if cap(buf) < int(n) {
			buf = make([]byte, n)
		}
		data := buf[:n]
		var errno uint32
		inRange := off+uint64(n) <= size && off+uint64(n) >= off
		switch typ {
		case nbdCmdRead:
			if !inRange {
				errno = nbdEINVAL
			} else if _, err := s.dev.ReadAt(data, int64(off)); err != nil {
				errno = ioErrno(err)
			}
		case nbdCmdWrite:
			if _, err := io.ReadFull(c, data); err != nil {
				return err
			}
			switch {
			case !inRange:
				errno = nbdEINVAL
			default:
				_, err := s.dev.WriteAt(data, int64(off))
				if err == nil && flags&nbdCmdFlagFUA != 0 {
					err = s.dev.Flush()
				}
				if err != nil {
					errno = ioErrno(err)
				}
			}
		case nbdCmdFlush:
			if err := s.dev.Flush(); err != nil {
				errno = ioErrno(err)
			}
		default:
			errno = nbdEINVAL
		}
		rep := make([]byte, 16, 16+n)
		be.PutUint32(rep[0:], nbdReplyMagic)
		be.PutUint32(rep[4:], errno)
		be.PutUint64(rep[8:], handle)
		if typ == nbdCmdRead && errno == 0 {
			rep = append(rep, data...)
		}
		if _, err := c.Write(rep); err != nil {
			return err
		}
	}
}

// ioErrno maps a device error to an NBD error value.
func ioErrno(err error) uint32 {
	switch Errno(err) {
	case -108:
		return nbdESHUTDOWN
	case -28:
		return nbdENOSPC
	}
	return nbdEIO
}
