"""The engine side of dit-explore: everything that runs where the model is (torch, diffusers).

`core/` is the torch-free part both processes share; the modules beside it run in the engine process
(`python -m dit_explore.engine`) or in the headless commands, never in the TUI process. This package's
own import is light: nothing heavy is imported until a module that needs it is.
"""
