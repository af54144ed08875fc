package localstack

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
)

// watchdogScript ignores terminal signals and waits for a line on stdin. The
// line "disarm" means the processes were stopped properly. End of file means
// this process died without stopping them, so it kills them (the arguments up
// to "--") and removes their directories (the arguments after it).
const watchdogScript = `trap '' INT TERM HUP
read -r line
[ "$line" = disarm ] && exit 0
while [ "$#" -gt 0 ] && [ "$1" != -- ]; do kill -9 "$1" 2>/dev/null; shift; done
[ "$#" -gt 0 ] && shift
[ "$#" -gt 0 ] || exit 0
sleep 1
rm -rf -- "$@"`

// watchdog kills processes that this one cannot give a Pdeathsig (envtest's)
// and removes the stack's directories if this process dies before Stop. It is a shell reading a pipe whose write
// end only this process holds: when this process dies, however it dies, the
// kernel closes the pipe and the shell kills the processes.
type watchdog struct {
	cmd *exec.Cmd
	w   *os.File
}

func newPIDs(before, after map[int]bool) []int {
	var pids []int
	for pid := range after {
		if !before[pid] {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return pids
}

// startWatchdog starts a watchdog for pids and dirs; empty dirs are skipped.
func startWatchdog(pids []int, dirs ...string) (*watchdog, error) {
	args := []string{"-c", watchdogScript, "watchdog"}
	for _, pid := range pids {
		args = append(args, strconv.Itoa(pid))
	}
	args = append(args, "--")
	for _, dir := range dirs {
		if dir != "" {
			args = append(args, dir)
		}
	}
	r, w, err := os.Pipe() // close-on-exec: no other child inherits w
	if err != nil {
		return nil, fmt.Errorf("start watchdog: %w", err)
	}
	defer r.Close()
	cmd := exec.Command("/bin/sh", args...)
	cmd.Stdin = r
	// Its own process group, so that Ctrl-C does not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, fmt.Errorf("start watchdog: %w", err)
	}
	return &watchdog{cmd: cmd, w: w}, nil
}

// disarm tells the watchdog that the processes were stopped and waits for it.
func (wd *watchdog) disarm() error {
	if wd == nil {
		return nil
	}
	_, werr := wd.w.WriteString("disarm\n")
	cerr := wd.w.Close()
	if err := errors.Join(werr, cerr, wd.cmd.Wait()); err != nil {
		return fmt.Errorf("disarm watchdog: %w", err)
	}
	return nil
}
