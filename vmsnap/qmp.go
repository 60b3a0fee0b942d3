package vmsnap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// ErrClosed is returned when qemu closes the QMP connection: it exited (a
// failed incoming migration makes qemu 7.2 exit at once) or another side
// ended the session.
var ErrClosed = errors.New("qemu closed the QMP connection")

// Error is a command qemu refused: its reply {"error": {"class", "desc"}}.
type Error struct {
	Command string // the QMP command, e.g. "migrate-incoming"
	Class   string // qemu's error class, e.g. "GenericError", "CommandNotFound"
	Desc    string // qemu's description
}

func (e *Error) Error() string {
	return fmt.Sprintf("qemu refused QMP %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Event is an asynchronous QMP event (STOP, RESUME, MIGRATION, SHUTDOWN…).
type Event struct {
	Name string
	Data json.RawMessage
	// Time is qemu's timestamp of the event.
	Time time.Time
}

// maxBufferedEvents bounds the events a Client keeps while nobody waits for
// them: a chatty qemu must not grow our memory without bound. Older ones are
// dropped first; the ones a caller waits for (MIGRATION, RESUME) follow its
// own command within a few events.
const maxBufferedEvents = 256

// Client is one QMP session with a qemu over its unix socket. It is not safe
// for concurrent use: QMP replies come in order on one stream, so one
// goroutine drives a session. After a context ended during a call the
// stream may be cut mid-message, so the Client refuses further calls.
type Client struct {
	path string
	conn *net.UnixConn
	dec  *json.Decoder
	// pid is qemu's process id from the socket's peer credentials.
	pid     int
	version QemuVersion
	nextID  int
	// events holds events read while waiting for a reply, oldest first.
	events []Event
	// broken is set once a read or write failed: later calls return it.
	broken error
}

// QemuVersion is the version qemu announces in its QMP greeting.
type QemuVersion struct {
	Major, Minor, Micro int
	Package             string
}

func (v QemuVersion) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
	if v.Package != "" {
		s += " (" + v.Package + ")"
	}
	return s
}

// message is any line qemu sends on QMP.
type message struct {
	QMP *struct {
		Version struct {
			Qemu struct {
				Major int `json:"major"`
				Minor int `json:"minor"`
				Micro int `json:"micro"`
			} `json:"qemu"`
			Package string `json:"package"`
		} `json:"version"`
	} `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	ID json.RawMessage `json:"id"`
}

// Dial connects to the QMP socket at path once, reads qemu's greeting and
// leaves negotiation mode (qmp_capabilities), so commands can follow. qemu
// serves one QMP session at a time: while another client is connected
// (microvm-shutdown's socat, a person's), the greeting waits until it
// leaves, bounded by ctx.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connecting to qemu's QMP socket %s: %w", path, err)
	}
	c := &Client{path: path, conn: conn.(*net.UnixConn), dec: json.NewDecoder(conn)}
	if err := c.handshake(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// WaitDial is Dial retried while the socket does not exist yet or refuses
// connections (qemu creates it about 40 ms after it starts, and a runner
// removes a stale one first), until ctx ends. A restore calls it right
// after starting qemu: this wait is qemu's start-up time.
func WaitDial(ctx context.Context, path string) (*Client, error) {
	// 2 ms: the wait is on a restore's critical path (~150 ms in all), and a
	// failed connect costs microseconds.
	const every = 2 * time.Millisecond
	for {
		c, err := Dial(ctx, path)
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, err
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("waiting for qemu's QMP socket %s (is qemu running with -qmp unix:%s,server=on,wait=off?): %w (last: %v)",
				path, path, ctx.Err(), err)
		case <-t.C:
		}
	}
}

func (c *Client) handshake(ctx context.Context) error {
	stop := c.bind(ctx)
	defer stop()
	var m message
	if err := c.dec.Decode(&m); err != nil {
		return c.readErr(ctx, "reading qemu's QMP greeting", err)
	}
	if m.QMP == nil {
		return fmt.Errorf("%s is not a QMP socket: its first message has no QMP greeting", c.path)
	}
	v := m.QMP.Version
	c.version = QemuVersion{Major: v.Qemu.Major, Minor: v.Qemu.Minor, Micro: v.Qemu.Micro, Package: v.Package}
	if pid, err := peerPID(c.conn); err == nil {
		c.pid = pid
	}
	stop()
	return c.Execute(ctx, "qmp_capabilities", nil, nil)
}

// PID is qemu's process id (from the socket's peer credentials), 0 when the
// kernel did not tell.
func (c *Client) PID() int { return c.pid }

// Version is the qemu version from the greeting.
func (c *Client) Version() QemuVersion { return c.version }

// Close ends the session.
func (c *Client) Close() error { return c.conn.Close() }

// bind makes the connection's I/O end when ctx ends, until the returned
// stop is called. It does not copy ctx's deadline onto the connection: the
// connection's timer could fire before ctx's, and the error would then not
// be ctx's. stop waits for the watcher to end, so a cancellation that comes
// late can never cut the next call short; it may be called more than once.
func (c *Client) bind(ctx context.Context) (stop func()) {
	_ = c.conn.SetDeadline(time.Time{})
	if ctx.Done() == nil {
		return func() {}
	}
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		select {
		case <-ctx.Done():
			// A deadline in the past makes blocked reads and writes return.
			_ = c.conn.SetDeadline(time.Unix(1, 0))
		case <-done:
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		<-exited
	}
}

// readErr turns a failed read into the error to return and marks the
// session broken.
func (c *Client) readErr(ctx context.Context, what string, err error) error {
	switch {
	case ctx.Err() != nil:
		err = fmt.Errorf("%s on %s: %w", what, c.path, ctx.Err())
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET):
		err = fmt.Errorf("%s on %s: %w", what, c.path, ErrClosed)
	default:
		err = fmt.Errorf("%s on %s: %w", what, c.path, err)
	}
	c.broken = err
	return err
}

// Execute runs one QMP command with args (nil for none) and decodes its
// return value into out (nil to ignore it). A refusal is an *Error. Events
// that arrive meanwhile are kept for WaitEvent.
func (c *Client) Execute(ctx context.Context, command string, args, out any) error {
	return c.execute(ctx, command, args, out, nil)
}

// SendFile hands qemu a duplicate of f's descriptor under name (QMP getfd,
// the descriptor passed with the command as SCM_RIGHTS), for a later
// "fd:NAME" migration URI. qemu owns its copy; the caller still closes f.
func (c *Client) SendFile(ctx context.Context, name string, f *os.File) error {
	return c.execute(ctx, "getfd", map[string]any{"fdname": name}, nil, f)
}

func (c *Client) execute(ctx context.Context, command string, args, out any, file *os.File) error {
	if c.broken != nil {
		return fmt.Errorf("QMP %s: session unusable after an earlier failure: %w", command, c.broken)
	}
	stop := c.bind(ctx)
	defer stop()
	c.nextID++
	id := c.nextID
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        int    `json:"id"`
	}{command, args, id}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encoding QMP %s: %w", command, err)
	}
	b = append(b, '\n')
	if file != nil {
		// The descriptor must travel with the command's first byte.
		var n int
		n, _, err = c.conn.WriteMsgUnix(b, syscall.UnixRights(int(file.Fd())), nil)
		if err == nil && n < len(b) {
			_, err = c.conn.Write(b[n:])
		}
	} else {
		_, err = c.conn.Write(b)
	}
	if err != nil {
		return c.readErr(ctx, "sending QMP "+command, err)
	}
	for {
		var m message
		if err := c.dec.Decode(&m); err != nil {
			return c.readErr(ctx, "waiting for the reply to QMP "+command, err)
		}
		if m.Event != "" {
			c.keep(m)
			continue
		}
		var got int
		if err := json.Unmarshal(m.ID, &got); err != nil || got != id {
			err = fmt.Errorf("QMP %s on %s: a reply with id %s, want %d: the session is out of step (another client on this connection?)",
				command, c.path, m.ID, id)
			c.broken = err
			return err
		}
		if m.Error != nil {
			return &Error{Command: command, Class: m.Error.Class, Desc: m.Error.Desc}
		}
		if out != nil {
			if err := json.Unmarshal(m.Return, out); err != nil {
				return fmt.Errorf("decoding qemu's reply to QMP %s (%s): %w", command, m.Return, err)
			}
		}
		return nil
	}
}

func (c *Client) keep(m message) {
	e := Event{Name: m.Event, Data: m.Data}
	if m.Timestamp != nil {
		e.Time = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
	}
	if len(c.events) == maxBufferedEvents {
		c.events = c.events[1:]
	}
	c.events = append(c.events, e)
}

// WaitEvent returns the first event, already received or still to come, for
// which match is true, and removes it from the kept ones. It fails when ctx
// ends or qemu closes the connection (ErrClosed).
func (c *Client) WaitEvent(ctx context.Context, match func(Event) bool) (Event, error) {
	for i, e := range c.events {
		if match(e) {
			c.events = append(c.events[:i], c.events[i+1:]...)
			return e, nil
		}
	}
	if c.broken != nil {
		return Event{}, fmt.Errorf("waiting for a QMP event: session unusable after an earlier failure: %w", c.broken)
	}
	stop := c.bind(ctx)
	defer stop()
	for {
		var m message
		if err := c.dec.Decode(&m); err != nil {
			return Event{}, c.readErr(ctx, "waiting for a QMP event", err)
		}
		if m.Event == "" {
			err := fmt.Errorf("waiting for a QMP event on %s: an unexpected reply (id %s): the session is out of step", c.path, m.ID)
			c.broken = err
			return Event{}, err
		}
		c.keep(m)
		if e := c.events[len(c.events)-1]; match(e) {
			c.events = c.events[:len(c.events)-1]
			return e, nil
		}
	}
}

// peerPID is the process id of the socket's other end (SO_PEERCRED).
func peerPID(conn *net.UnixConn) (int, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return int(cred.Pid), nil
}
