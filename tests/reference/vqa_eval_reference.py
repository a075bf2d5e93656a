"""Reference for data/vqa_metrics.h: a transcription of the official evaluation code (stdlib only).

Mirrors, step for step and quirk for quirk:
  GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py  (processPunctuation, processDigitArticle,
      evaluate, setAccuracy, setEvalQA) and PythonHelperTools/vqaTools/vqa.py (loadRes, createIndex)
  LLaVA llava/eval/m4c_evaluator.py (EvalAIAnswerProcessor), scripts/convert_gqa_for_eval.py,
      llava/eval/eval_science_qa.py (answer parsing + get_pred_idx), llava/eval/eval_pope.py (parsing + metrics)

Usage (tests/data/test_vqa_metrics.cpp, "[reference]", runs it this way):
  python tests/reference/vqa_eval_reference.py --cases CASES.json --out OUT.json
CASES.json: {"texts": [str], "questions": [{"gt": [str], "pred": str}],
             "vqav2": {"annotations": [{question_id, question_type, answer_type, answers: [str]}],
                       "results": [{"question_id", "answer"}]},
             "pope": {"predictions": [str], "labels": [str]}}
OUT.json: for each text: punct, digit_article, eval_ai, gqa, scienceqa (the parsed answer), pope; for each
question: accuracy (in [0, 1], unrounded); vqav2: the evaluator's accuracy dict plus evalQA; pope: the metrics.
"""
import argparse
import json
import re

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
assert len(CONTRACTIONS) == 120
MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
              "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ["a", "an", "the"]
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
EVALAI_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def process_punctuation(in_text, comma_strip=COMMA_STRIP):
    out_text = in_text
    for p in PUNCT:
        if (p + " " in in_text or " " + p in in_text) or (re.search(comma_strip, in_text) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    # the official quirk: re.UNICODE (32) lands where sub() takes its count
    return PERIOD_STRIP.sub("", out_text, re.UNICODE)


def process_digit_article(in_text):
    words = []
    for word in in_text.lower().split():
        word = MANUAL_MAP.setdefault(word, word)
        if word not in ARTICLES:
            words.append(word)
    for i, word in enumerate(words):
        if word in CONTRACTIONS:
            words[i] = CONTRACTIONS[word]
    return " ".join(words)


def eval_ai(item):
    item = item.lower()
    item = item.replace(",", "").replace("?", "").replace("'s", " 's")
    item = item.strip()
    item = item.replace("\n", " ").replace("\t", " ").strip()
    item = process_punctuation(item, EVALAI_COMMA_STRIP)
    return process_digit_article(item)


def vqa_evaluate(annotations, results, n=2):
    """VQA.loadRes + VQAEval.evaluate over in-memory lists; answer dicts carry answer_id as in VQAv2."""
    qa = {}
    for ann in annotations:
        qa[ann["question_id"]] = {
            "question_type": ann["question_type"], "answer_type": ann["answer_type"],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                        for i, a in enumerate(ann["answers"])]}
    res_ids = [r["question_id"] for r in results]
    assert set(res_ids) == (set(res_ids) & set(qa)), "Results do not correspond to current VQA set"
    res = {r["question_id"]: r for r in results}
    ques_ids = [ann["question_id"] for ann in annotations]
    acc_qa, acc_ques_type, acc_ans_type, eval_qa, raw = [], {}, {}, {}, {}
    for ques_id in ques_ids:
        gts = qa[ques_id]
        for ans_dic in gts["answers"]:
            ans_dic["answer"] = ans_dic["answer"].replace("\n", " ").replace("\t", " ").strip()
        res_ans = res[ques_id]["answer"].replace("\n", " ").replace("\t", " ").strip()
        gt_answers = [ans["answer"] for ans in gts["answers"]]
        if len(set(gt_answers)) > 1:
            for ans_dic in gts["answers"]:
                ans_dic["answer"] = process_digit_article(process_punctuation(ans_dic["answer"]))
            res_ans = process_digit_article(process_punctuation(res_ans))
        gt_acc = []
        for gt_ans_datum in gts["answers"]:
            other = [item for item in gts["answers"] if item != gt_ans_datum]
            matching = [item for item in other if item["answer"] == res_ans]
            gt_acc.append(min(1, float(len(matching)) / 3))
        avg = float(sum(gt_acc)) / len(gt_acc)
        acc_qa.append(avg)
        acc_ques_type.setdefault(gts["question_type"], []).append(avg)
        acc_ans_type.setdefault(gts["answer_type"], []).append(avg)
        eval_qa[str(ques_id)] = round(100 * avg, n)
        raw[ques_id] = avg
    return {
        "overall": round(100 * float(sum(acc_qa)) / len(acc_qa), n),
        "perQuestionType": {t: round(100 * float(sum(v)) / len(v), n) for t, v in acc_ques_type.items()},
        "perAnswerType": {t: round(100 * float(sum(v)) / len(v), n) for t, v in acc_ans_type.items()},
        "evalQA": eval_qa,
    }, raw


def question_accuracy(gt, pred):
    _, raw = vqa_evaluate([{"question_id": 0, "question_type": "q", "answer_type": "a", "answers": gt}],
                          [{"question_id": 0, "answer": pred}])
    return raw[0]


def scienceqa_parse(pred_text, options=("A", "B", "C", "D", "E")):
    if pred_text in options:
        return pred_text
    if len(pred_text) >= 3 and pred_text[0] in options and pred_text[1:3] == ". ":
        return pred_text[0]
    res = re.compile(r'The answer is ([A-Z]).').findall(pred_text)
    return res[0] if len(res) == 1 else "FAILED"


def pope_parse(text):
    if text.find('.') != -1:
        text = text.split('.')[0]
    text = text.replace(',', '')
    words = text.split(' ')
    return 'no' if ('No' in words or 'not' in words or 'no' in words) else 'yes'


def pope_metrics(predictions, labels):
    pred_list = [0 if p == 'no' else 1 for p in predictions]
    label_list = [0 if l == 'no' else 1 for l in labels]
    yes_ratio = pred_list.count(1) / len(pred_list)
    tp = fp = tn = fn = 0
    for pred, label in zip(pred_list, label_list):
        if pred == 1 and label == 1:
            tp += 1
        elif pred == 1 and label == 0:
            fp += 1
        elif pred == 0 and label == 0:
            tn += 1
        elif pred == 0 and label == 1:
            fn += 1
    precision = float(tp) / float(tp + fp)
    recall = float(tp) / float(tp + fn)
    f1 = 2 * precision * recall / (precision + recall)
    acc = (tp + tn) / (tp + tn + fp + fn)
    return {"accuracy": acc, "precision": precision, "recall": recall, "f1": f1, "yes_ratio": yes_ratio,
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.cases, encoding="utf-8") as f:
        cases = json.load(f)
    out = {"texts": [], "questions": []}
    for t in cases.get("texts", []):
        out["texts"].append({"punct": process_punctuation(t), "digit_article": process_digit_article(t),
                             "eval_ai": eval_ai(t), "gqa": t.rstrip('.').lower(),
                             "scienceqa": scienceqa_parse(t), "pope": pope_parse(t)})
    for q in cases.get("questions", []):
        out["questions"].append({"accuracy": question_accuracy(q["gt"], q["pred"])})
    if "vqav2" in cases:
        out["vqav2"] = vqa_evaluate(cases["vqav2"]["annotations"], cases["vqav2"]["results"])[0]
    if "pope" in cases:
        out["pope"] = pope_metrics(cases["pope"]["predictions"], cases["pope"]["labels"])
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
