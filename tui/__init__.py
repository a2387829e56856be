"""The TUI side of dit-explore: the Textual explorer, its session logic and the engine client. It runs in
the user's terminal process and never imports torch, diffusers or transformers; the model lives in the
engine process (dit_explore.engine), reached only through the wire protocol."""
