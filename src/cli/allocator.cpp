// jemalloc's settings for the llmtune binary, read by jemalloc when it starts (the `malloc_conf`
// symbol; a MALLOC_CONF environment variable still overrides them). Dirty pages are kept, not
// returned to the kernel after a delay: a training step frees and re-allocates the same activation
// sizes every step, and handing them back only for them to fault in again cost 10-16% of a CPU
// QLoRA step's speed. The resident peak is what the process held at once plus jemalloc's size-class
// rounding, no longer glibc's fragmented heaps (cmake/LlmtuneDeps.cmake).
#ifdef LLMTUNE_WITH_JEMALLOC
extern "C" {
// NOLINTNEXTLINE: the name and type are jemalloc's interface.
const char* malloc_conf = "dirty_decay_ms:-1,muzzy_decay_ms:-1";
}
#endif
