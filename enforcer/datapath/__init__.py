"""The kernel half: BPF programs, their maps, attach points.

Layers, each using only the ones above it:
  bpfsys   bpf(2) syscall wrapper (maps by fd, pins, test runs)
  layout   ctypes mirrors of the C map keys and values
  reasons  verdict reasons parsed from bpf/lib/reasons.h
  source   BPF C source preparation and compile options
  maps     typed access to the pinned maps
  loader   compile with bcc, load, pin
  ringbuf  a ring buffer map read by mmap and epoll (no bcc)
  loadchild the loader run in a child process; the daemon opens its pins
  attach   clsact attach/detach through pyroute2
  events   ring-buffer verdict events
"""
