package localstack

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// childAttr makes the kernel kill a child when this process dies, even by
// SIGKILL. The signal is tied to the OS thread that started the child; the Go
// runtime only ends threads whose goroutine exits while locked to it, so do
// not start children from a goroutine that called runtime.LockOSThread.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// envtestNames are the process names (comm) of envtest's children.
var envtestNames = [][]byte{[]byte("etcd"), []byte("kube-apiserver")}

// childPIDs returns the direct children of this process that run etcd or
// kube-apiserver. envtest starts them without Pdeathsig and in their own
// process group, so nothing else ends them if this process dies.
func childPIDs() map[int]bool {
	pids := map[int]bool{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	self := os.Getpid()
	for _, path := range stats {
		data, err := os.ReadFile(path)
		if err != nil {
			continue // gone meanwhile
		}
		// Format: PID (COMM) STATE PPID ...; COMM may hold spaces and parens.
		open, end := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
		if open < 0 || end < open {
			continue
		}
		fields := bytes.Fields(data[end+1:])
		if len(fields) < 2 {
			continue
		}
		ppid, err := strconv.Atoi(string(fields[1]))
		if err != nil || ppid != self {
			continue
		}
		comm := data[open+1 : end]
		for _, name := range envtestNames {
			if bytes.Equal(comm, name) {
				pid, err := strconv.Atoi(string(bytes.TrimSpace(data[:open])))
				if err == nil {
					pids[pid] = true
				}
			}
		}
	}
	return pids
}

// killLeftovers kills those of pids that are still envtest-like children of
// this process, and waits up to five seconds for them to be gone. envtest's
// own goroutines reap them.
func killLeftovers(pids []int) error {
	left := func() []int {
		children := childPIDs()
		var alive []int
		for _, pid := range pids {
			if children[pid] {
				alive = append(alive, pid)
			}
		}
		return alive
	}
	alive := left()
	for _, pid := range alive {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for deadline := time.Now().Add(5 * time.Second); len(alive) > 0; alive = left() {
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still running after SIGKILL", alive)
		}
		time.Sleep(pollInterval)
	}
	return nil
}
