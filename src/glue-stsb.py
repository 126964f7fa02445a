"""Fine-tune on GLUE STS-B with LoRA or AdaLoRA: python src/glue-stsb.py --help"""

from adarank.pipeline import main

if __name__ == "__main__":
    main("stsb")
