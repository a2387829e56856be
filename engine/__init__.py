"""The engine side of dit-explore: everything that runs where the model is (torch, diffusers).

`core/` is the torch-free part both processes share; the modules beside it run in the engine process
(`python -m dit_explore.engine`) or in the headless commands, never in the TUI process. This package's
own import is light: nothing heavy is imported until a module that needs it is.
"""

import logging as _logging
import os as _os

# diffusers, transformers and torchao talk while they are imported (torchao's optional native kernels and
# torchvision are missing, torch's pytree deprecates torchao's enums): harmless, and not the user's concern.
# Before any of them is imported, so that every entry point (`python -m dit_explore.engine.…` too) is quiet;
# DIFFUSERS_VERBOSITY / TRANSFORMERS_VERBOSITY set by the user still win. engine/models.py quiet_libraries
# does the rest (progress bars) when a model is loaded.
for _variable in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
    _os.environ.setdefault(_variable, "error")
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
