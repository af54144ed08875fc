package localstack

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Module is the module path that RepoRoot looks for.
const Module = "github.com/zeroscaler/zeroscaler"

var (
	// ErrStopTimeout means the daemon did not exit within the timeout after
	// SIGTERM and was killed.
	ErrStopTimeout = errors.New("daemon did not exit after SIGTERM")
	// ErrSignaled means the daemon was ended by a signal instead of exiting.
	ErrSignaled = errors.New("daemon ended by a signal")
)

// RepoRoot walks up from the working directory to the directory whose go.mod
// declares Module.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repo root: %w", err)
	}
	for {
		if modulePath(filepath.Join(dir, "go.mod")) == Module {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("find repo root: no go.mod for %s above the working directory", Module)
		}
		dir = parent
	}
}

// modulePath returns the module path declared in a go.mod file, or "".
func modulePath(gomod string) string {
	f, err := os.Open(gomod)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module"); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// BuildDaemon runs `go build [flags] -o DIR/zeroscaler .` at the repository
// root and returns the binary's path. Call it once per test run, for example
// from TestMain; pass "-race" in flags to build a race-detecting daemon.
func BuildDaemon(dir string, flags ...string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "zeroscaler")
	args := append([]string{"build"}, flags...)
	args = append(args, "-o", out, ".")
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if output, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build daemon: %w\n%s", err, output)
	}
	return out, nil
}

// Daemon is a child process whose output goes to a file and to memory.
type Daemon struct {
	// LogPath is the file holding its stdout and stderr.
	LogPath string

	cmd  *exec.Cmd
	out  *lockedBuffer
	log  *os.File
	done chan struct{} // closed once the process has exited and output is flushed
}

// StartDaemon starts binary with args, appending its stdout and stderr to
// logPath. The child inherits the environment and gets SIGKILL if this
// process dies.
func StartDaemon(binary, logPath string, args ...string) (*Daemon, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open daemon log: %w", err)
	}
	d := &Daemon{LogPath: logPath, out: &lockedBuffer{}, log: log, done: make(chan struct{})}
	w := io.MultiWriter(log, d.out)
	d.cmd = exec.Command(binary, args...)
	d.cmd.Stdout = w
	d.cmd.Stderr = w
	d.cmd.SysProcAttr = childAttr()
	// Stop waiting for output a little after exit, should the daemon have
	// left a child holding the pipe.
	d.cmd.WaitDelay = 2 * time.Second
	if err := d.cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start daemon: %w", err)
	}
	go func() {
		_ = d.cmd.Wait() // the state is read from ProcessState
		log.Close()
		close(d.done)
	}()
	return d, nil
}

// PID returns the process ID.
func (d *Daemon) PID() int { return d.cmd.Process.Pid }

// Output returns everything the daemon has written to stdout and stderr.
func (d *Daemon) Output() string { return d.out.String() }

// Done is closed when the daemon has exited.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// Wait waits for the daemon to exit by itself and returns its exit code. It
// returns ErrSignaled if a signal ended it, or ctx's error if ctx ends first
// (the daemon keeps running then).
func (d *Daemon) Wait(ctx context.Context) (int, error) {
	select {
	case <-d.done:
		return d.exitCode()
	case <-ctx.Done():
		return 0, fmt.Errorf("wait for daemon: %w", ctx.Err())
	}
}

// Stop sends SIGTERM and waits up to timeout for the daemon to exit, then
// returns its exit code. If it does not exit in time it is killed and Stop
// returns ErrStopTimeout. If it had already exited, Stop returns how.
func (d *Daemon) Stop(timeout time.Duration) (int, error) {
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return 0, fmt.Errorf("stop daemon: %w", err)
	}
	select {
	case <-d.done:
		return d.exitCode()
	case <-time.After(timeout):
	}
	_ = d.cmd.Process.Kill()
	<-d.done
	return 0, fmt.Errorf("stop daemon: %w (killed after %v)", ErrStopTimeout, timeout)
}

// Kill sends SIGKILL and waits for the daemon to exit, as a crash would end it.
func (d *Daemon) Kill() error {
	if err := d.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill daemon: %w", err)
	}
	<-d.done
	return nil
}

func (d *Daemon) exitCode() (int, error) {
	st := d.cmd.ProcessState
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 0, fmt.Errorf("%w: %v", ErrSignaled, ws.Signal())
	}
	return st.ExitCode(), nil
}

// lockedBuffer is a bytes.Buffer safe for one writer and many readers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
