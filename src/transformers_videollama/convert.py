"""`python -m transformers_videollama.convert ...`: the release converter's command line (see
`convert_videollama_weights_to_hf`)."""

import sys

from .convert_videollama_weights_to_hf import main


if __name__ == "__main__":
    sys.exit(main())
