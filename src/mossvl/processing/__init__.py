"""Media and prompt processing: images, videos with timestamps, chat prompts and the MossVLProcessor."""
