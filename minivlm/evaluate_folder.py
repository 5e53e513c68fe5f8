"""`minivlm eval --data DIR`: how well a model captions and answers a folder of your own
images (minivlm.data.FolderDataset), and whether it uses them.

  loss, perplexity         teacher-forced loss per trained token over every row
  image information gain   loss with the images rolled by one within each batch (each
                           text gets another row's image) minus loss with the true
                           images, in nats per token; 0 for a folder of one image
  exact match              greedy generation equals the row's text: captions for
                           caption rows, answers for question rows, and both together
"""

from __future__ import annotations

import numpy as np

from .autograd import Tensor, no_grad
from .data import FolderDataset, Tokenizer, collate
from .generate import answer_questions, caption_images
from .models import VLM


def evaluate_folder(
    model: VLM,
    tokenizer: Tokenizer,
    dataset: FolderDataset,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, float]:
    """The metrics above over every row of `dataset` (encoded by `tokenizer`)."""
    model.eval()
    true_loss = shuffled_loss = 0.0
    tokens = caption_hits = captions = answer_hits = answers = 0
    max_len = model.config.max_len + 1
    for start in range(0, len(dataset), batch_size):
        examples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collate(examples, max_len=max_len)
        n = int((batch.targets != -100).sum())
        with no_grad():
            _, loss = model(Tensor(batch.images).to(device), batch.inputs, batch.targets)
            true_loss += loss.item() * n
            rolled = np.roll(batch.images, 1, axis=0)  # (B, 3, S, S): row b gets image b-1
            _, loss = model(Tensor(rolled).to(device), batch.inputs, batch.targets)
            shuffled_loss += loss.item() * n
        tokens += n
        caption_rows = [i for i, e in enumerate(examples) if e.task == "caption"]
        question_rows = [i for i, e in enumerate(examples) if e.task == "qa"]
        if caption_rows:
            generated = caption_images(model, tokenizer, batch.images[caption_rows])
            caption_hits += sum(
                g.text == examples[i].caption for g, i in zip(generated, caption_rows, strict=True)
            )
            captions += len(caption_rows)
        if question_rows:
            said = answer_questions(
                model,
                tokenizer,
                batch.images[question_rows],
                [examples[i].question for i in question_rows],
            )
            answer_hits += sum(
                a == examples[i].answer for a, i in zip(said, question_rows, strict=True)
            )
            answers += len(question_rows)
    loss = true_loss / max(tokens, 1)
    results = {
        "loss": loss,
        "perplexity": float(np.exp(loss)),
        "image_information_gain": shuffled_loss / max(tokens, 1) - loss,
        "exact_match": (caption_hits + answer_hits) / max(captions + answers, 1),
        "rows": len(dataset),
    }
    if captions:
        results |= {"caption_exact_match": caption_hits / captions, "caption_rows": captions}
    if answers:
        results |= {"answer_exact_match": answer_hits / answers, "question_rows": answers}
    return results
