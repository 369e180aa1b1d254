"""Layers a method adds to a model: LoRA adapters through peft (`lora`)."""
