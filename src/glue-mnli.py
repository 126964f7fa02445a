"""Fine-tune on GLUE MNLI with LoRA or AdaLoRA: python src/glue-mnli.py --help"""

from adarank.pipeline import main

if __name__ == "__main__":
    main("mnli")
